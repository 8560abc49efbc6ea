"""VGG, MobileNetV2 and ShuffleNet V1/V2: shapes, parameter counts, reference state-dict keys,
checkpoint round trip and the FeatureModel accessors (CPU, a few seconds)."""
import hashlib

import pytest
import torch
import torch.nn as nn

from models import create_model

torch.set_num_threads(1)

# name -> (feats shapes without batch for a 3x32x32 input, entries of state_dict, parameters at
# 100 classes, sha1[:16] of the "key:shape" lines of the state dict in order). The last three
# were computed by instantiating the reference classes (RepDistiller models/vgg.py _bn variants,
# mobilenetv2.py, ShuffleNetv1.py, ShuffleNetv2.py; SimKD for mobile_half_double and
# ShuffleV2_1_5), so a match means a reference checkpoint loads with strict=True.
VGG_FEATS = [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4), (512,)]
EXPECTED = {
    "vgg8": (VGG_FEATS, 37, 3_965_028, "3e1fe60b492fea75"),
    "vgg11": (VGG_FEATS, 58, 9_277_284, "54506af80898518f"),
    "vgg13": (VGG_FEATS, 72, 9_462_180, "0a33da377f23634a"),
    "vgg16": (VGG_FEATS, 93, 14_774_436, "d6bb31f6534ae9ee"),
    "vgg19": (VGG_FEATS, 114, 20_086_692, "80289b6b6ea4a6fb"),
    "mobile_half": ([(16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2), (1280,)],
                    320, 812_836, "fdb708b1871a52c9"),
    "MobileNetV2_1_0": ([(32, 16, 16), (24, 16, 16), (32, 8, 8), (96, 4, 4), (320, 2, 2),
                         (1280,)], 320, 2_353_060, "3f94b3101d3c629c"),
    "ShuffleV1": ([(24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4), (960,)],
                  296, 949_258, "42ca995735aef6aa"),
    "ShuffleV2": ([(24, 32, 32), (116, 16, 16), (232, 8, 8), (464, 4, 4), (1024,)],
                  338, 1_355_528, "c0db1f26642cba8c"),
    "ShuffleV2_1_5": ([(24, 32, 32), (176, 16, 16), (352, 8, 8), (704, 4, 4), (1024,)],
                      338, 2_580_548, "4b06c24d0dfb53e9"),
}
ALIASES = {"MobileNetV2": "mobile_half", **{f"vgg{d}_bn": f"vgg{d}" for d in (8, 11, 13, 16, 19)}}
for _alias, _target in ALIASES.items():
    EXPECTED[_alias] = EXPECTED[_target]
NAMES = sorted(EXPECTED)

# Figures quoted in the CRD / SimKD papers (millions of parameters, CIFAR-100).
PUBLISHED_M = {"vgg8": 3.96, "vgg13": 9.46, "ShuffleV1": 0.95, "ShuffleV2": 1.36,
               "mobile_half": 0.81}

# Exact reference key names, spot-checked (with nesting).
REFERENCE_KEYS = {
    "vgg8": ["block0.0.weight", "block0.0.bias", "block0.1.running_mean", "block4.1.weight",
             "classifier.weight", "classifier.bias"],
    "vgg13": ["block0.3.weight", "block0.4.num_batches_tracked", "block4.4.running_var"],
    "mobile_half": ["conv1.0.weight", "conv1.1.running_var", "blocks.0.0.conv.0.weight",
                    "blocks.1.1.conv.7.weight", "blocks.6.0.conv.6.weight", "conv2.0.weight",
                    "conv2.1.bias", "classifier.0.weight", "classifier.0.bias"],
    "ShuffleV1": ["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer2.7.bn3.bias",
                  "layer3.3.conv3.weight", "linear.weight", "linear.bias"],
    "ShuffleV2": ["conv1.weight", "bn1.running_mean", "layer1.0.conv5.weight",
                  "layer1.0.bn5.weight", "layer1.3.conv3.weight", "layer2.7.bn3.weight",
                  "layer3.3.bn1.bias", "conv2.weight", "bn2.weight", "linear.weight"],
}
N_STAGES_WITH_BN = {"vgg": 4, "mobile": 4, "MobileNetV2": 4, "ShuffleV1": 3}


def _model(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=100)
    # Non-trivial BN statistics, so that eval-mode outputs depend on the buffers too.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_feats(name, x):
    model = _model(name)
    shapes = EXPECTED[name][0]
    with torch.no_grad():
        logits = model(x)
        feats, logits_f = model(x, is_feat=True)
        pre_feats, logits_p = model(x, is_feat=True, preact=True)
    assert logits.shape == (2, 100)
    assert torch.equal(logits, logits_f) and torch.equal(logits, logits_p)
    assert [tuple(f.shape[1:]) for f in feats] == shapes
    assert [tuple(f.shape[1:]) for f in pre_feats] == shapes
    assert model.feature_shapes() == shapes
    # The stem and the pooled feature are the same with and without preact.
    assert torch.equal(feats[0], pre_feats[0]) and torch.equal(feats[-1], pre_feats[-1])
    for f, p in zip(feats[1:-1], pre_feats[1:-1]):
        if name.startswith("mobile") or name.startswith("MobileNetV2"):
            assert torch.equal(f, p)  # linear bottlenecks: no ReLU at the stage ends
        else:
            assert f.min() >= 0 and p.min() < 0
            if not name.startswith("ShuffleV2"):  # ShuffleV2 takes preact before its shuffle
                assert torch.equal(f, p.clamp(min=0))


@pytest.mark.parametrize("name", NAMES)
def test_reference_state_dict_and_param_count(name):
    model = create_model(name, num_classes=100)
    _, n_keys, n_params, digest = EXPECTED[name]
    sd = model.state_dict()
    lines = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sd.items())
    assert len(sd) == n_keys
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert hashlib.sha1(lines.encode()).hexdigest()[:16] == digest
    for key in REFERENCE_KEYS.get(ALIASES.get(name, name), []):
        assert key in sd, key


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_param_count_matches_published(name):
    n = sum(p.numel() for p in create_model(name, num_classes=100).parameters())
    # exact counts against figures quoted to two decimals in millions: their rounding is up
    # to 0.6% (0.81M); 0.35% seen
    assert n / 1e6 == pytest.approx(PUBLISHED_M[name], rel=0.02)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip(name, x, tmp_path):
    model = _model(name)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict()}, path)
    torch.manual_seed(123)
    fresh = create_model(name, num_classes=100)
    fresh.load_state_dict(torch.load(path, map_location="cpu")["model"], strict=True)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
        for a, b in zip(model(x, is_feat=True)[0], fresh(x, is_feat=True)[0]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_accessors(name, x):
    model = _model(name)
    with torch.no_grad():
        feats, logits = model(x, is_feat=True)
        classifier = model.get_classifier()
        assert isinstance(classifier, nn.Linear)
        # the model's own classifier on the feature it was given: the same kernel, equal on
        # any CPU (0 seen); 1e-6 is only slack
        torch.testing.assert_close(classifier(feats[-1]), logits, rtol=0, atol=1e-6)
    feat_modules = model.get_feat_modules()
    assert isinstance(feat_modules, nn.ModuleList) and len(feat_modules) > 0
    assert all(any(m is s for s in model.modules()) for m in feat_modules)

    n_stages = next((n for prefix, n in N_STAGES_WITH_BN.items() if name.startswith(prefix)),
                    None)
    if n_stages is None:  # ShuffleV2: no BN before the stage ReLU, as in RepDistiller
        with pytest.raises(NotImplementedError):
            model.get_bn_before_relu()
        return
    bns = model.get_bn_before_relu()
    assert len(bns) == n_stages == len(feats) - 2
    for bn, f in zip(bns, feats[1:-1]):
        assert isinstance(bn, nn.BatchNorm2d)
        assert any(bn is m for m in model.modules())
        assert bn.num_features == f.shape[1]


def test_vgg_bn_before_relu_feeds_preact():
    """For VGG the stage's pre-ReLU output is exactly the output of get_bn_before_relu()."""
    model = _model("vgg8")
    outputs = []
    hooks = [bn.register_forward_hook(lambda m, i, o: outputs.append(o))
             for bn in model.get_bn_before_relu()]
    with torch.no_grad():
        pre_feats, _ = model(torch.randn(2, 3, 32, 32), is_feat=True, preact=True)
    for h in hooks:
        h.remove()
    assert all(torch.equal(o, p) for o, p in zip(outputs, pre_feats[1:-1]))


def test_aliases_build_the_same_model(x):
    for alias, target in ALIASES.items():
        a, b = _model(alias), _model(target)
        with torch.no_grad():
            assert torch.equal(a(x), b(x)), alias

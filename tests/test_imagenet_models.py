"""ImageNet models (models/imagenet.py): torchvision's own modules and keys, the feature API."""
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from helper.core.errors import UserError  # noqa: E402
from models import create_model, model_names  # noqa: E402
from models import imagenet  # noqa: E402

torch.set_num_threads(1)

TORCHVISION = ["resnet18", "resnet34", "resnet50", "wide_resnet50_2", "mobilenet_v2",
               "shufflenet_v2_x1_0"]
RESNET_56 = [(64, 56, 56)]
SHAPES = {  # feats at 3x224x224: stem, stages, pooled
    "resnet18": RESNET_56 + [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7), (512,)],
    "resnet34": RESNET_56 + [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7), (512,)],
    "resnet50": RESNET_56 + [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7), (2048,)],
    "wide_resnet50_2": RESNET_56 + [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7),
                                    (2048,)],
    "mobilenet_v2": [(32, 112, 112), (24, 56, 56), (32, 28, 28), (96, 14, 14), (320, 7, 7), (1280,)],
    "shufflenet_v2_x1_0": [(24, 56, 56), (116, 28, 28), (232, 14, 14), (464, 7, 7), (1024,)],
    "mobilenet_v1": [(32, 112, 112), (128, 56, 56), (256, 28, 28), (512, 14, 14), (1024, 7, 7),
                     (1024,)],
}


def randomise_bn(model, seed=0):
    """Non-trivial BN statistics, so that eval-mode outputs depend on every buffer."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model


def test_registered_next_to_the_cifar_models():
    names = model_names()
    for name in TORCHVISION + ["mobilenet_v1", "ResNet18", "ResNet34", "ResNet50"]:
        assert name in names
    cifar, imagenet_model = (create_model(n, num_classes=10) for n in ("ResNet18", "resnet18"))
    assert type(cifar) is not type(imagenet_model)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "shufflenet_v2_x1_0"])
def test_torchvision_state_dict_loads_strict_and_gives_same_logits(name):
    torch.manual_seed(0)
    reference = randomise_bn(getattr(torchvision.models, name)(num_classes=10)).eval()
    model = create_model(name, num_classes=10).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    assert isinstance(model, type(reference))  # still a torchvision model
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        assert torch.equal(model(x), expected)
        feats, logits = model(x, is_feat=True)
        assert torch.equal(logits, expected)
        pre, logits_pre = model(x, is_feat=True, preact=True)
        assert torch.equal(logits_pre, expected)
        # the model's own fc on the pooled feature it was given: the same kernel, equal on any
        # CPU (0 seen); the tolerance is only slack
        assert torch.allclose(model.get_classifier()(feats[-1]), expected, atol=1e-5)
    # preact: the stage outputs before their last ReLU
    for f, p in zip(feats[1:-1], pre[1:-1]):
        if name == "mobilenet_v2":
            assert torch.equal(f, p)  # MobileNetV2 stages end without a ReLU
        else:
            assert torch.equal(f, torch.relu(p)) and (p < 0).any()


@pytest.mark.parametrize("name", ["resnet34", "wide_resnet50_2"])
def test_same_keys_and_logits_as_torchvision_big_models(name):
    model = randomise_bn(create_model(name, num_classes=10)).eval()
    with torch.device("meta"):  # no second initialisation of 69M parameters
        reference = getattr(torchvision.models, name)(num_classes=10)
    reference.load_state_dict(model.state_dict(), strict=True, assign=True)
    reference.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize("name", TORCHVISION + ["mobilenet_v1"])
def test_feature_shapes_at_224(name):
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = create_model(name, num_classes=1000)
        feats, logits = model(torch.zeros(1, 3, 224, 224), is_feat=True)
        pre, _ = model(torch.zeros(1, 3, 224, 224), is_feat=True, preact=True)
    assert model.input_size == (3, 224, 224)
    assert [tuple(f.shape[1:]) for f in feats] == SHAPES[name]
    assert [tuple(f.shape[1:]) for f in pre] == SHAPES[name]
    assert tuple(logits.shape) == (1, 1000)
    assert model.get_classifier().in_features == SHAPES[name][-1][0]


def test_resnet50_forward_at_224():
    model = randomise_bn(create_model("resnet50", num_classes=1000)).eval()
    with torch.no_grad():
        feats, logits = model(torch.randn(1, 3, 224, 224), is_feat=True)
    assert [tuple(f.shape[1:]) for f in feats] == SHAPES["resnet50"]
    # the model's own fc on its pooled feature: the same kernel, equal on any CPU (slack only)
    assert torch.allclose(model.get_classifier()(feats[-1]), logits, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v1"])
def test_bn_before_relu_matches_stage_channels(name):
    with torch.device("meta"):
        model = create_model(name, num_classes=10)
    bns = model.get_bn_before_relu()
    assert all(isinstance(bn, nn.BatchNorm2d) for bn in bns)
    assert [bn.num_features for bn in bns] == [s[0] for s in SHAPES[name][1:-1]]
    with pytest.raises(NotImplementedError):
        create_model("shufflenet_v2_x1_0", num_classes=10).get_bn_before_relu()


def test_bn_before_relu_is_the_preact_bn():
    """ResNet: the stage's preact is that BN's output plus the identity path."""
    model = randomise_bn(create_model("resnet18", num_classes=10)).eval()
    seen = []
    hooks = [bn.register_forward_hook(lambda m, i, o: seen.append(o))
             for bn in model.get_bn_before_relu()]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats, _ = model(x, is_feat=True)
        pre, _ = model(x, is_feat=True, preact=True)
    for h in hooks:
        h.remove()
    # pre = bn2 output + identity; the last block of each stage keeps its input as identity
    for k in range(4):
        layer = getattr(model, f"layer{k + 1}")
        with torch.no_grad():
            block_in = layer[:-1](feats[k])
        # the same blocks on the same input, then the block's own float32 add: equal on any
        # CPU (0 seen, |pre| < 25); the tolerance is only slack
        assert torch.allclose(pre[k + 1], seen[4 + k] + block_in, atol=1e-5)


def test_mobilenet_v1_parameters_and_keys():
    model = create_model("mobilenet_v1", num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == 4_231_976
    keys = list(model.state_dict())
    assert keys[:2] == ["model.0.0.weight", "model.0.1.weight"]
    assert "model.13.4.running_var" in keys and keys[-2:] == ["fc.weight", "fc.bias"]
    model = randomise_bn(model).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        feats, logits_feat = model(x, is_feat=True)
        pre, _ = model(x, is_feat=True, preact=True)
    assert torch.equal(logits, logits_feat)
    # the model's own fc on its pooled feature: the same kernel, equal on any CPU (slack only)
    assert torch.allclose(model.get_classifier()(feats[-1]), logits, atol=1e-5)
    for f, p in zip(feats[1:-1], pre[1:-1]):
        assert torch.equal(f, torch.relu(p)) and (p < 0).any()


def test_pretrained_from_a_torchvision_file(tmp_path):
    reference = randomise_bn(torchvision.models.resnet18(num_classes=10)).eval()
    path = tmp_path / "resnet18-10.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("resnet18", num_classes=10, pretrained=str(path)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    torch.save({"model": {f"module.{k}": v for k, v in reference.state_dict().items()}},
               tmp_path / "ddp.pth")
    create_model("resnet18", num_classes=10, pretrained=str(tmp_path / "ddp.pth"))
    with pytest.raises(UserError, match=r"not fit resnet18 with 1000 classes.*fc\.weight"):
        create_model("resnet18", num_classes=1000, pretrained=str(path))
    with pytest.raises(UserError, match="does not exist"):
        create_model("resnet18", num_classes=10, pretrained=str(tmp_path / "missing.pth"))


def test_pretrained_enum_names(monkeypatch):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match=r"cannot download https://.*offline\?"):
        create_model("mobilenet_v2", num_classes=1000, pretrained="IMAGENET1K_V1")
    with pytest.raises(UserError, match=r"IMAGENET1K_V1, IMAGENET1K_V2"):
        create_model("resnet50", num_classes=1000, pretrained="IMAGENET_V7")
    with pytest.raises(UserError, match="have 1000 classes, the model has 10"):
        create_model("resnet18", num_classes=10, pretrained="DEFAULT")
    with pytest.raises(UserError, match="torchvision has no weights for mobilenet_v1"):
        create_model("mobilenet_v1", num_classes=1000, pretrained="IMAGENET1K_V1")

    loaded = {}

    def cached(url, *args, **kwargs):  # a file already in torch's hub cache
        loaded["url"] = url
        return torchvision.models.shufflenet_v2_x1_0().state_dict()

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", cached)
    model = create_model("shufflenet_v2_x1_0", num_classes=1000,
                         pretrained="ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1")
    assert loaded["url"].startswith("https://download.pytorch.org/")
    assert isinstance(model, imagenet.ShuffleNetV2)

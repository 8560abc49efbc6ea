"""CIFAR ResNets, resnetv2 ResNets, WRNs and the MNIST MLPs: shapes, features, parameter counts
and RepDistiller state-dict compatibility. Reference figures come from running
HobbitLong/RepDistiller's models/{resnet,resnetv2,wrn}.py."""
import pytest
import torch
import torch.nn as nn

from models import create_model, model_names

torch.set_num_threads(1)

S16 = [16, 16, 32, 64]    # RepDistiller's plain CIFAR ResNets
X2 = [16, 32, 64, 128]    # SimKD's x2 widths
X4 = [32, 64, 128, 256]   # resnet8x4 / resnet32x4


def _cifar(c):  # feats shapes of a 3-stage CIFAR net with channels c = [stem, s1, s2, s3]
    return [(c[0], 32, 32), (c[1], 32, 32), (c[2], 16, 16), (c[3], 8, 8), (c[3],)]


def _v2(c, e):  # 4-stage resnetv2 with expansion e
    return [(64, 32, 32), (64 * e, 32, 32), (128 * e, 16, 16), (256 * e, 8, 8), (512 * e, 4, 4),
            (512 * e,)]


FEATS = {
    **{n: _cifar(S16) for n in ['resnet8', 'resnet14', 'resnet20', 'resnet32', 'resnet44',
                                'resnet56', 'resnet110', 'resnet38', 'resnet116', 'resnet200']},
    **{n: _cifar(X2) for n in ['resnet14x2', 'resnet38x2', 'resnet110x2']},
    **{n: _cifar(X4) for n in ['resnet8x4', 'resnet32x4', 'resnet14x4', 'resnet20x4', 'resnet26x4',
                               'resnet38x4', 'resnet44x4', 'resnet56x4', 'resnet110x4']},
    'ResNet18': _v2(64, 1), 'ResNet34': _v2(64, 1), 'ResNet50': _v2(64, 4),
    'wrn_16_1': _cifar([16, 16, 32, 64]), 'wrn_40_1': _cifar([16, 16, 32, 64]),
    'wrn_16_2': _cifar([16, 32, 64, 128]), 'wrn_40_2': _cifar([16, 32, 64, 128]),
    'mlp_1200': [(1200,)] * 3, 'mlp_800': [(800,)] * 3,
}
CNNS = [n for n in FEATS if not n.startswith('mlp')]
WRNS = [n for n in FEATS if n.startswith('wrn')]
POST_ACT = [n for n in CNNS if n not in WRNS]  # stage outputs end with a ReLU

# Exact counts at 100 classes, from RepDistiller's own model code.
EXACT_PARAMS = {
    'resnet8': 83_892, 'resnet14': 181_108, 'resnet20': 278_324, 'resnet32': 472_756,
    'resnet44': 667_188, 'resnet56': 861_620, 'resnet110': 1_736_564,
    'resnet8x4': 1_233_540, 'resnet32x4': 7_433_860,
    'ResNet18': 11_220_132, 'ResNet34': 21_328_292, 'ResNet50': 23_705_252,
    'wrn_16_1': 180_916, 'wrn_16_2': 703_284, 'wrn_40_1': 569_780, 'wrn_40_2': 2_255_156,
}
# The figures quoted in the papers / READMEs (millions), checked to 1%.
QUOTED_PARAMS = {'resnet8x4': 1.23e6, 'resnet32x4': 7.43e6, 'resnet56': 0.86e6,
                 'resnet110': 1.73e6, 'wrn_40_2': 2.26e6}


def _build(name, num_classes=100):
    torch.manual_seed(0)
    return create_model(name, num_classes=num_classes)


def _input(model, n=2):
    return torch.randn(n, *model.input_size, generator=torch.Generator().manual_seed(1))


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_all_registered():
    assert set(FEATS) <= set(model_names())


@pytest.mark.parametrize('name', list(FEATS))
def test_forward_and_features(name):
    model = _build(name).eval()
    x = _input(model)
    assert model.input_size == ((1, 28, 28) if name.startswith('mlp') else (3, 32, 32))
    with torch.no_grad():
        logits = model(x)
        feats, logits_f = model(x, is_feat=True)
        pre, logits_p = model(x, is_feat=True, preact=True)
    assert logits.shape == (2, 100)
    assert [tuple(f.shape[1:]) for f in feats] == FEATS[name]
    assert [tuple(f.shape[1:]) for f in pre] == FEATS[name]
    assert model.feature_shapes() == FEATS[name]
    # Here and in the tests below, both sides of each assert_close run the same modules on the
    # same input, so the same kernels in the same order: equal on any CPU; the float32 defaults
    # (rtol 1.3e-6, atol 1e-5) are only slack.
    torch.testing.assert_close(logits_f, logits)
    torch.testing.assert_close(logits_p, logits)
    # The stem and the pooled entry do not change with preact; the stages do.
    torch.testing.assert_close(pre[0], feats[0])
    torch.testing.assert_close(pre[-1], feats[-1])
    for f, p in zip(feats[1:-1], pre[1:-1]):
        assert not torch.equal(f, p)
    # The classifier maps the pooled feature to the logits.
    torch.testing.assert_close(model.get_classifier()(feats[-1]), logits)


@pytest.mark.parametrize('name', POST_ACT + ['mlp_800'])
def test_preact_is_before_the_stage_relu(name):
    model = _build(name).eval()
    with torch.no_grad():
        feats, _ = model(_input(model), is_feat=True)
        pre, _ = model(_input(model), is_feat=True, preact=True)
    for f, p in zip(feats[1:-1], pre[1:-1]):
        assert f.min() >= 0 and p.min() < 0
        torch.testing.assert_close(torch.relu(p), f)


@pytest.mark.parametrize('name', list(FEATS))
def test_classifier_reproduces_logits_in_train_mode(name):
    model = _build(name).train()
    feats, logits = model(_input(model, 4), is_feat=True)
    torch.testing.assert_close(model.get_classifier()(feats[-1]), logits)


@pytest.mark.parametrize('name', list(EXACT_PARAMS))
def test_parameter_counts(name):
    n = _n_params(_build(name))
    assert n == EXACT_PARAMS[name]
    if name in QUOTED_PARAMS:
        # exact counts against figures quoted to two decimals in millions: their rounding is
        # up to 0.6% (0.86M); 0.4% seen (resnet110's 1.73M, truncated)
        assert abs(n - QUOTED_PARAMS[name]) / QUOTED_PARAMS[name] < 0.01


def test_mlp_parameter_counts():
    def mlp(h, c):
        return 784 * h + h + h * h + h + h * c + c
    for c in (10, 100):
        assert _n_params(_build('mlp_1200', c)) == mlp(1200, c)
        assert _n_params(_build('mlp_800', c)) == mlp(800, c)
    assert mlp(1200, 10) == 2_395_210 and mlp(800, 10) == 1_276_810


@pytest.mark.parametrize('name', list(FEATS))
def test_state_dict_round_trip(name, tmp_path):
    model = _build(name)
    with torch.no_grad():
        model.train()(_input(model, 4))  # move the BN running statistics off their defaults
    path = tmp_path / 'ckpt.pth'
    torch.save({'model': model.state_dict()}, path)

    torch.manual_seed(123)  # a fresh instance with different weights
    fresh = create_model(name, num_classes=100)
    fresh.load_state_dict(torch.load(path, weights_only=True)['model'], strict=True)
    x = _input(model)
    with torch.no_grad():
        # the same weights and buffers through the same kernels: bit-identical on any CPU
        torch.testing.assert_close(fresh.eval()(x), model.eval()(x), rtol=0, atol=0)


REFERENCE_KEYS = {  # name: (number of state-dict entries, keys present, keys absent)
    'resnet8x4': (62, ['conv1.weight', 'bn1.running_mean', 'layer1.0.conv1.weight',
                       'layer1.0.bn2.num_batches_tracked', 'layer1.0.downsample.0.weight',
                       'layer1.0.downsample.1.running_var', 'layer3.0.downsample.0.weight',
                       'fc.weight', 'fc.bias'],
                  ['layer1.1.conv1.weight', 'linear.weight']),
    'resnet56': (344, ['layer1.8.bn2.weight', 'layer2.0.downsample.0.weight', 'fc.weight'],
                 ['layer1.0.downsample.0.weight']),  # 16 -> 16: identity shortcut
    'wrn_40_2': (227, ['conv1.weight', 'block1.layer.0.bn1.running_mean',
                       'block1.layer.0.convShortcut.weight', 'block2.layer.0.convShortcut.weight',
                       'block3.layer.5.conv2.weight', 'block3.layer.5.bn2.running_var',
                       'bn1.weight', 'bn1.running_mean', 'fc.weight', 'fc.bias'],
                 ['block1.layer.1.convShortcut.weight', 'conv1.bias']),
    'wrn_40_1': (226, ['block2.layer.0.convShortcut.weight'],
                 ['block1.layer.0.convShortcut.weight']),  # 16 -> 16
    'ResNet50': (320, ['conv1.weight', 'bn1.running_var', 'layer1.0.conv3.weight',
                       'layer1.0.shortcut.0.weight', 'layer1.0.shortcut.1.running_mean',
                       'layer4.2.bn3.weight', 'linear.weight', 'linear.bias'],
                 ['layer1.1.shortcut.0.weight', 'fc.weight']),
}


@pytest.mark.parametrize('name', list(REFERENCE_KEYS))
def test_reference_state_dict_keys(name):
    count, present, absent = REFERENCE_KEYS[name]
    sd = _build(name).state_dict()
    assert len(sd) == count
    assert set(present) <= set(sd)
    assert not set(absent) & set(sd)


@pytest.mark.parametrize('name', CNNS)
def test_bn_before_relu(name):
    model = _build(name)
    bns = model.get_bn_before_relu()
    n_stages = len(FEATS[name]) - 2
    assert len(bns) == n_stages
    assert all(isinstance(bn, nn.BatchNorm2d) for bn in bns)
    assert [bn.num_features for bn in bns] == [s[0] for s in FEATS[name][1:-1]]
    assert len(model.get_feat_modules()) == (4 if name in WRNS else 6)


def test_mlp_has_no_bn():
    with pytest.raises(NotImplementedError):
        _build('mlp_800').get_bn_before_relu()


@pytest.mark.parametrize('name', WRNS)
def test_wrn_preact_is_the_following_bn(name):
    """WRN stages end without a ReLU; their preact feature is the next BN's output, as in
    RepDistiller, and that BN runs once per forward (RepDistiller runs it twice)."""
    model = _build(name)
    with torch.no_grad():
        model.train()(_input(model, 4))
        model.eval()
        feats, _ = model(_input(model), is_feat=True)
        pre, _ = model(_input(model), is_feat=True, preact=True)
        for bn, f, p in zip(model.get_bn_before_relu(), feats[1:-1], pre[1:-1]):
            torch.testing.assert_close(bn(f), p)
        model.train()
        before = [bn.num_batches_tracked.item() for bn in model.get_bn_before_relu()]
        model(_input(model, 4), is_feat=True, preact=True)
        after = [bn.num_batches_tracked.item() for bn in model.get_bn_before_relu()]
    assert [a - b for a, b in zip(after, before)] == [1, 1, 1]


def test_mlp_dropout():
    teacher, student = _build('mlp_1200'), _build('mlp_800')
    assert (teacher.drop_in.p, teacher.drop.p) == (0.2, 0.5)
    assert (student.drop_in.p, student.drop.p) == (0.0, 0.0)
    x = _input(teacher, 4)
    with torch.no_grad():
        assert not torch.equal(teacher.train()(x), teacher(x))
        torch.testing.assert_close(teacher.eval()(x), teacher(x))
        torch.testing.assert_close(student.train()(x), student(x))
        feats, _ = teacher.eval()(x, is_feat=True)
    torch.testing.assert_close(feats[-1], feats[-2])  # pooled == hidden2 in eval mode
    assert _build('mlp_1200', 10)(x).shape == (4, 10)


def test_dummy_passes_restore_every_mode_and_leave_bn_statistics():
    """models.base.evaluating / dummy_pass (feature_shapes, fit_to_data, the sources' probe,
    CAT-KD's and FitNets' probes, the teacher cache's build, the MAC count): eval mode without
    a graph for the pass; afterwards every module's own mode is back (a frozen BN kept in eval
    among training ones too) and no BatchNorm statistic has moved."""
    from models.base import dummy_input, dummy_pass, evaluating, fit_to_data
    model = create_model("resnet8", 10).train()
    frozen = model.bn1
    frozen.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    assert not all(modes.values()) and any(modes.values())
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "batches" in k}

    def unchanged():
        assert {name: m.training for name, m in model.named_modules()} == modes
        now = model.state_dict()
        assert all(torch.equal(now[k], v) for k, v in stats.items())

    logits = dummy_pass(model, batch=3)
    assert logits.shape == (3, 10) and not logits.requires_grad
    unchanged()
    assert model.feature_shapes() == [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8), (64,)]
    unchanged()
    assert fit_to_data(model, (3, 32, 32), "student") is model
    unchanged()
    with evaluating(model, grad=True):
        assert not model.training and not frozen.training
        out = model(dummy_input(model, (3, 32, 32)))
        assert out.requires_grad and out.shape == (2, 10)
    unchanged()
    with pytest.raises(RuntimeError), evaluating(model):
        model(torch.zeros(2, 3, 7))  # a failing pass restores the modes as well
    unchanged()
    with pytest.raises(Exception, match="cannot take this data set's 1x28x28 inputs"):
        fit_to_data(model, (1, 28, 28), "student")
    unchanged()

"""akamaster's pytorch_resnet_cifar10 ResNets: a file in its exact layout (DataParallel keys,
``{'state_dict', 'best_prec1'}``, the legacy serialisation) loads strict with the same logits;
feature shapes; the parameter counts of its README."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.run.checkpoint import load_teacher
from helper.core.errors import UserError
from helper.core.files import state_dict_of
from models import create_model


# The reference, written down from akamaster/pytorch_resnet_cifar10 resnet.py (its module tree,
# names and option-A shortcut), to produce files in its layout.
class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class _Block(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = _Lambda(lambda x: F.pad(x[:, :, ::2, ::2],
                                                    (0, 0, 0, 0, planes // 4, planes // 4),
                                                    "constant", 0))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class _Reference(nn.Module):
    def __init__(self, n, num_classes=10):
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._layer(16, n, 1)
        self.layer2 = self._layer(32, n, 2)
        self.layer3 = self._layer(64, n, 2)
        self.linear = nn.Linear(64, num_classes)

    def _layer(self, planes, n, stride):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(_Block(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


def _reference(n):
    torch.manual_seed(0)
    model = _Reference(n)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # trained-looking BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model.eval()


def _write_akamaster_file(model, path):
    """As akamaster's trainer.py saves: the DataParallel model's state dict, old format."""
    wrapped = nn.DataParallel(model)
    torch.save({"state_dict": wrapped.state_dict(), "best_prec1": 91.73}, path,
               _use_new_zipfile_serialization=False)
    return path


def _accepts_state_dict_key():
    try:
        state_dict_of({"state_dict": {"w": torch.zeros(1)}, "best_prec1": 1.0}, "x", "x")
        return True
    except UserError:
        return False


@pytest.mark.parametrize("depth", [20, 32])
def test_akamaster_file_loads_strict_with_the_same_logits(tmp_path, depth):
    reference = _reference((depth - 2) // 6)
    path = _write_akamaster_file(reference, tmp_path / f"resnet{depth}-12345678.th")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in checkpoint["state_dict"])
    model = create_model(f"resnet{depth}_akamaster", 10).eval()
    model.load_state_dict(state_dict_of(checkpoint, path, "file"), strict=True)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = reference(x)
        assert torch.allclose(model(x), expected, rtol=0, atol=1e-5)
        feats, logits = model(x, is_feat=True)
        assert torch.equal(logits, model(x))
        pre, _ = model(x, is_feat=True, preact=True)
    assert torch.equal(F.relu(pre[3]), feats[3])


@pytest.mark.skipif(not _accepts_state_dict_key(),
                    reason="helper/files.state_dict_of does not read a 'state_dict' entry yet")
def test_akamaster_file_loads_as_a_teacher(tmp_path):
    reference = _reference(3)
    path = _write_akamaster_file(reference, tmp_path / "resnet20-12fca82f.th")
    teacher, _ = load_teacher(path, 10, "resnet20_akamaster")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(teacher(x), reference(x), rtol=0, atol=1e-5)


def test_state_dict_of_other_files():
    sd = {"module.linear.weight": torch.zeros(10, 64)}
    assert list(state_dict_of(sd, "x", "file")) == ["linear.weight"]
    for content in ({"best_prec1": 1.0}, [1, 2]):
        with pytest.raises(UserError, match="holds no model weights"):
            state_dict_of(content, "x", "file")


def test_feature_shapes_and_api():
    model = create_model("resnet20_akamaster", 100)
    assert model.feature_shapes() == [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8), (64,)]
    assert model.feature_shapes(preact=True) == model.feature_shapes()
    assert model.get_classifier() is model.linear
    assert len(model.get_bn_before_relu()) == 3 and len(model.get_feat_modules()) == 6
    # no shortcut parameters (option A): the keys are akamaster's
    assert not any("shortcut" in k for k in model.state_dict())
    assert model.linear.out_features == 100


@pytest.mark.parametrize("depth,millions", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85),
                                            (110, 1.7)])
def test_parameter_counts_match_the_readme(depth, millions):
    model = create_model(f"resnet{depth}_akamaster", 10)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    digits = 1 if millions >= 1 else 2
    assert round(count, digits) == millions
    assert count == sum(p.numel() for p in _Reference((depth - 2) // 6).parameters()) / 1e6


def test_folder_name_picks_the_akamaster_model():
    from helper.run.checkpoint import model_name_from_path
    path = "save/teachers/resnet56_akamaster_vanilla_cifar10_trial_0/best.pth"
    assert model_name_from_path(path) == "resnet56_akamaster"


def test_register_converts_an_akamaster_file(tmp_path, capsys):
    from helper.teachers import zoo as teachers
    reference = _reference(3)
    path = _write_akamaster_file(reference, tmp_path / "resnet20-12fca82f.th")
    save = tmp_path / "save"
    teachers.main(["register", str(path), "--model", "resnet20_akamaster", "--dataset", "cifar10",
                   "--save_folder", str(save)])
    best = save / "teachers" / "resnet20_akamaster_vanilla_cifar10_trial_0" / "best.pth"
    teacher, checkpoint = load_teacher(best, 10)
    assert checkpoint["best_acc"] == pytest.approx(91.73) and checkpoint["dataset"] == "cifar10"
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(teacher(x), reference(x), rtol=0, atol=1e-5)
    # the wrong architecture or class count is one line, exit 2, and nothing is written
    for argv in (["--model", "resnet32_akamaster", "--dataset", "cifar10"],
                 ["--model", "resnet20_akamaster", "--dataset", "cifar100"]):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            teachers.main(["register", str(path), *argv, "--save_folder", str(tmp_path / "x")])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "does not fit" in err[0]
    assert not (tmp_path / "x").exists()


AKAMASTER = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])  # its trainer.py's Normalize
CIFAR = ([0.5071, 0.4867, 0.4408], [0.2675, 0.2565, 0.2761])  # dataset/cifar.py


def _normalised(pixels, mean, std):
    return (pixels - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        std, dtype=torch.float64).view(1, 3, 1, 1)


def _register(path, save, *extra):
    from helper.teachers import zoo as teachers
    teachers.main(["register", str(path), "--model", "resnet20_akamaster", "--dataset", "cifar10",
                   "--save_folder", str(save), "--no_check", *extra])
    return save / "teachers" / "resnet20_akamaster_vanilla_cifar10_trial_0" / "best.pth"


def test_registered_file_sees_the_normalisation_it_was_trained_with(tmp_path):
    """akamaster's file records ImageNet's mean and std; as a CIFAR-10 teacher it gives, on
    images our pipeline normalises, its own logits and features on those same pixels normalised
    its way (float64: exact up to rounding)."""
    reference = _reference(3).double()
    best = _register(_write_akamaster_file(_reference(3), tmp_path / "resnet20-12fca82f.th"),
                     tmp_path / "save")
    stored = torch.load(best, weights_only=True)
    assert stored["normalization"] == {"mean": AKAMASTER[0], "std": AKAMASTER[1]}
    teacher, _ = load_teacher(best, 10, dataset="cifar10")
    teacher.double()
    assert set(teacher.state_dict()) == set(create_model("resnet20_akamaster", 10).state_dict())
    pixels = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    ours, theirs = _normalised(pixels, *CIFAR), _normalised(pixels, *AKAMASTER)
    with torch.no_grad():
        want = reference(theirs)
        assert torch.allclose(teacher(ours), want, rtol=0, atol=1e-9)
        for preact in (False, True):
            feats, logits = teacher(ours, is_feat=True, preact=preact)
            plain = create_model("resnet20_akamaster", 10).double().eval()
            plain.load_state_dict(teacher.state_dict())
            feats_want, _ = plain(theirs, is_feat=True, preact=preact)
            assert torch.allclose(logits, want, rtol=0, atol=1e-9)
            for got, exp in zip(feats, feats_want):
                assert torch.allclose(got, exp, rtol=0, atol=1e-9)
        # without it the teacher would see other inputs: its logits move far beyond rounding
        assert (plain(ours) - want).abs().max() > 1e-2
    # on the normalisation it was trained with (ImageNet's, as the folder data sets), no map
    same, _ = load_teacher(best, 10, dataset="imagenet")
    assert not hasattr(same, "input_renorm_scale") and not same._forward_pre_hooks


def test_mean_and_std_flags_and_other_formats(tmp_path, capsys):
    path = _write_akamaster_file(_reference(3), tmp_path / "r.th")
    best = _register(path, tmp_path / "a", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")
    assert torch.load(best, weights_only=True)["normalization"] == {
        "mean": [0.5] * 3, "std": [0.25] * 3}
    # a RepDistiller-style file of the same weights: the toolbox pipeline's normalisation
    bare = tmp_path / "bare.pth"
    torch.save({"model": _reference(3).state_dict()}, bare)
    best = _register(bare, tmp_path / "b")
    assert torch.load(best, weights_only=True)["normalization"] == {"mean": CIFAR[0],
                                                                    "std": CIFAR[1]}
    for extra, expected in ((["--mean", "0.5,0.5,0.5"], "both --mean and --std"),
                            (["--mean", "a,b,c", "--std", "1,1,1"], "one number per channel"),
                            (["--mean", "0,0,0", "--std", "1,0,1"], "positive std")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            _register(path, tmp_path / "x", *extra)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "x").exists()

"""Models from other sources (models/sources.py): ``timm:NAME``, ``torchvision:NAME`` and the
user's ``FILE.py:FUNCTION``, built without weights, through the one adapter per source: their
feature API, real one-epoch runs of logit and feature methods, the one-line refusals, and a
student of a prefixed name serving later as a teacher."""
import textwrap

import pytest
import torch

pytest.importorskip("timm")

from helper.run.checkpoint import load_teacher  # noqa: E402
from helper.core.errors import UserError  # noqa: E402
from helpers import one_epoch, one_line_user_error, save_teacher  # noqa: E402
from models import create_model  # noqa: E402
from models.base import fit_to_data  # noqa: E402
from models.registry import folder_name, unknown_model  # noqa: E402

CIFAR = (3, 32, 32)


def _built(name, num_classes=10, size=CIFAR):
    torch.manual_seed(0)
    return fit_to_data(create_model(name, num_classes), size)


def _check_pooled_and_logits(model):
    """``model(x)`` == the feature pass's logits == ``get_classifier()(pooled)`` (eval)."""
    model.eval()
    x = torch.randn(2, *model.input_size)
    with torch.no_grad():
        feats, logits = model(x, is_feat=True)
        assert torch.allclose(model(x), logits, atol=1e-5)
        assert torch.allclose(model.get_classifier()(feats[-1]), logits, atol=1e-5)
    assert [tuple(f.shape[1:]) for f in feats] == model.feature_shapes()
    return feats


def save_checkpoint(name, path, num_classes=100):
    """An untrained teacher checkpoint of ``name``, its BatchNorm statistics estimated at 32x32
    (helpers.save_teacher)."""
    return save_teacher(name, path, num_classes, input_size=CIFAR)


# ---- the feature API ----------------------------------------------------------------------
def test_timm_cnns_give_stages_pooled_and_their_classifier():
    import timm
    model = _built("timm:resnet10t")
    assert model.model_name == "timm:resnet10t" and isinstance(model, timm.models.ResNet)
    assert model.feature_shapes() == [(64, 16, 16), (64, 8, 8), (128, 4, 4), (256, 2, 2),
                                      (512, 1, 1), (512,)]
    _check_pooled_and_logits(model)
    assert model.get_classifier() is model.fc
    # state-dict keys are timm's own, so timm's weight files load unchanged
    assert list(model.state_dict()) == list(timm.create_model("resnet10t").state_dict())
    assert all(m is not model.fc for m in model.get_feat_modules())
    with pytest.raises(NotImplementedError):
        model.get_bn_before_relu()

    small = _built("timm:mobilenetv3_small_050")
    assert small.feature_shapes() == [(16, 16, 16), (8, 8, 8), (16, 4, 4), (24, 2, 2),
                                      (288, 1, 1), (1024,)]
    _check_pooled_and_logits(small)


def test_torchvision_stages_match_the_hand_written_resnet18():
    """The generic node choice (the last node of each resolution) gives the same stages and
    pooled feature as models/imagenet.py's hand-written ResNet-18, on the same weights; its
    stem is the ReLU before the max-pool (mdistiller's), SimKD's the max-pool's output."""
    tv = _built("torchvision:resnet18")
    ours = _built("resnet18")
    ours.load_state_dict(tv.state_dict())
    feats = _check_pooled_and_logits(tv)
    assert tv.feature_shapes()[0] == (64, 16, 16)
    assert tv.feature_shapes()[1:] == ours.feature_shapes()[1:]
    ours.eval()
    x = torch.randn(2, *CIFAR)
    with torch.no_grad():
        tv_feats, _ = tv(x, is_feat=True)
        our_feats, _ = ours(x, is_feat=True)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(tv_feats[1:], our_feats[1:]))
    assert len(feats) == 6 and tv.get_classifier() is tv.fc

    mobile = _built("torchvision:mobilenet_v3_small")
    assert mobile.feature_shapes() == [(16, 16, 16), (16, 8, 8), (24, 4, 4), (48, 2, 2),
                                       (576, 1, 1), (1024,)]
    _check_pooled_and_logits(mobile)
    assert mobile.get_classifier() is mobile.classifier[-1]


def test_vit_on_cifar_size_gives_patch_grid_maps():
    model = _built("timm:vit_tiny_patch16_224")  # dynamic_img_size: a 2x2 grid at 32x32
    assert model.feature_shapes() == [(192, 2, 2)] * 5 + [(192,)]
    _check_pooled_and_logits(model)


def test_preact_and_token_only_vits_are_refused_in_one_line():
    model = _built("timm:resnet10t")
    with pytest.raises(UserError, match=r"timm:resnet10t .*preact=True.*ab, mgd and reviewkd"):
        model.feature_shapes(preact=True)
    vit = create_model("torchvision:vit_b_16", 10)  # no patch grid in its graph: logits only
    assert vit(torch.zeros(1, 3, 224, 224)).shape == (1, 10)
    with pytest.raises(UserError, match="torchvision:vit_b_16 .*no stage feature maps") as e:
        vit.feature_shapes()
    assert "\n" not in str(e.value)


def test_names_are_checked_without_building():
    assert unknown_model("timm:resnet10t") == unknown_model("torchvision:resnet18") == ""
    assert "timm has no model 'nope'" in unknown_model("timm:nope")
    assert "torchvision has no model" in unknown_model("torchvision:nope")
    assert "no such file" in unknown_model("no/such/net.py:build")
    assert "invalid choice" in unknown_model("resnet9000")
    assert folder_name("some/where/net.py:build") == "net.py-build"
    assert folder_name("timm:resnet10t") == "timm:resnet10t"


# ---- real runs ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tv_teacher(tmp_path_factory):
    return save_checkpoint("torchvision:resnet18", tmp_path_factory.mktemp("src") / "t.pth")


@pytest.mark.parametrize("method", ["kd", "at"])
def test_one_epoch_timm_student_torchvision_teacher(method, tv_teacher, cifar100_tiny, tmp_path):
    run, _ = one_epoch(method, tv_teacher, "timm:resnet10t", cifar100_tiny, tmp_path)
    assert "timm:resnet10t" in run.name


def test_one_epoch_vit_student_kd(tv_teacher, cifar100_tiny, tmp_path):
    one_epoch("kd", tv_teacher, "timm:vit_tiny_patch16_224", cifar100_tiny, tmp_path)


def test_timm_student_serves_as_teacher(tv_teacher, cifar100_tiny, tmp_path):
    """The checkpoint stores the prefixed name in full; load_teacher builds it back."""
    run, _ = one_epoch("kd", tv_teacher, "timm:mobilenetv3_small_050", cifar100_tiny,
                       tmp_path / "a")
    best = next(p for p in run.iterdir() if p.name.endswith("best.pth"))
    assert torch.load(best, weights_only=False)["model_name"] == "timm:mobilenetv3_small_050"
    teacher, _ = load_teacher(best, 100)
    assert teacher.model_name == "timm:mobilenetv3_small_050"
    one_epoch("kd", best, "torchvision:mobilenet_v3_small", cifar100_tiny, tmp_path / "b")
    import train_student
    train_student.main(["--evaluate", str(best), "--dataset", "cifar100",
                        "--data_folder", str(cifar100_tiny), "--print_freq", "1000"])


def test_user_module_logits_only(tv_teacher, cifar100_tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative name: run folders name the model (a path's '/'
    net = "my_net.py"            # would nest them until run_folder uses registry.folder_name)
    (tmp_path / net).write_text(textwrap.dedent("""
        import torch.nn as nn

        def build(num_classes):
            return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(8, num_classes))

        def zoo(num_classes):
            from models import create_model
            return create_model("resnet8", num_classes=num_classes)
    """))
    model = create_model(f"{net}:build", 10)
    assert model(torch.zeros(2, *CIFAR)).shape == (2, 10)
    assert model.get_classifier() is model[-1]
    assert create_model(f"{net}:zoo", 10).feature_shapes()[-1] == (64,)  # has the API: as is
    run, _ = one_epoch("kd", tv_teacher, f"{net}:build", cifar100_tiny, tmp_path / "kd")
    assert run.parent == tmp_path / "kd" / "students"
    line = one_line_user_error(capsys, "at", f"{net}:build", cifar100_tiny, tmp_path / "at",
                               teacher=tv_teacher)
    assert "without the feature API" in line and "--distill kd" in line


def test_unknown_source_names_fail_in_one_line(cifar100_tiny, tmp_path, capsys):
    line = one_line_user_error(capsys, "kd", "timm:no_such_net", cifar100_tiny, tmp_path)
    assert "timm has no model 'no_such_net'" in line


@pytest.mark.parametrize("method", ["crd", "simkd"])
def test_one_epoch_feature_methods_with_extras(method, tv_teacher, cifar100_tiny, tmp_path):
    extra = ["--nce_k", "64"] if method == "crd" else []
    one_epoch(method, tv_teacher, "timm:mobilenetv3_small_050", cifar100_tiny, tmp_path, *extra)


def test_pretrained_weight_file_of_a_prefixed_name(tmp_path):
    """--pretrained FILE: a torchvision weight file (its own keys) loads into torchvision:NAME;
    a classifier of another class count starts fresh."""
    from helper.run.checkpoint import create_pretrained
    import torchvision
    torch.manual_seed(1)
    source = torchvision.models.resnet18(num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = create_pretrained("torchvision:resnet18", 10, str(tmp_path / "resnet18.pth"))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 10


def test_python_m_models_lists_the_sources(capsys, monkeypatch):
    import models.__main__ as listing
    monkeypatch.setattr(listing, "model_names", lambda: ["resnet8"])
    listing.main([])
    out = capsys.readouterr().out
    assert "resnet8" in out
    for how in ("timm:NAME", "torchvision:NAME", "FILE.py:FUNCTION"):
        assert how in out


def test_model_options_in_the_name_size_a_vit_for_cifar(capsys):
    name = "timm:vit_tiny_patch16_224:patch_size=4,img_size=32"
    model = create_model(name, num_classes=10)
    assert model.input_size == (3, 32, 32) and model.model_name == name
    assert model.patch_embed.num_patches == 64  # 8x8 tokens of 4x4 pixels
    feats, logits = model(torch.randn(2, 3, 32, 32), is_feat=True)
    assert logits.shape == (2, 10) and feats[-2].shape == (2, 192, 8, 8)
    assert "key=value" in unknown_model("timm:vit_tiny_patch16_224:patch_size")
    assert "timm has no model 'nope'" in unknown_model("timm:nope:img_size=32")
    from models.__main__ import main
    main(["--num_classes", "10"])
    out = capsys.readouterr().out
    assert "resnet18" in out and "3x224x224 *" in out and "ImageNet models" in out

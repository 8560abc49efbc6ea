"""Every checkpoint layout users bring, laid out exactly as each source's own saving code writes
it (file and line cited per layout), loads through the one loading path (``--path_t``,
``--evaluate``, ``--pretrained``, ``register``) with the source model's logits; what cannot be
used is refused in one line. The real published files are tests/test_real_checkpoints.py."""
import argparse
import io
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import train_student
import train_teacher
from helper.run.checkpoint import create_pretrained, load_teacher
from helper.core.errors import UserError
from helper.core.files import load_file, load_weights, state_dict_of
from models import create_model

ARCH = "resnet8"


def _source_model(name=ARCH, num_classes=100, seed=0):
    """A model with non-trivial BatchNorm statistics, in eval mode (a trained file's)."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=num_classes)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _optimizer_state(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return optimizer, optimizer.state_dict()


def _without_num_batches_tracked(state):
    """As written by PyTorch before 0.4.1 (akamaster's files, torchvision's oldest weights)."""
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def repdistiller_teacher(model):
    # RepDistiller train_teacher.py (and SimKD's, CRD's): state = {'epoch', 'model':
    # model.state_dict(), 'best_acc', 'optimizer': optimizer.state_dict()}; torch.save(state, ...)
    return {"epoch": 240, "model": model.state_dict(), "best_acc": torch.tensor(72.34),
            "optimizer": _optimizer_state(model)[1]}


def simkd_student(model):
    # SimKD train_student.py: state = {'epoch', 'model': model_s.state_dict(), 'best_acc'}
    # (plus 'proj' for --distill simkd, tested apart)
    return {"epoch": 240, "model": model.state_dict(), "best_acc": 75.1}


def mdistiller_student(model):
    # mdistiller/engine/trainer.py BaseTrainer.train_epoch: student_state = {"model":
    # self.distiller.module.student.state_dict()} -> student_best, student_latest
    return {"model": model.state_dict()}


def mdistiller_distiller(model):
    # mdistiller/engine/trainer.py BaseTrainer.train_epoch: state = {"epoch", "model":
    # self.distiller.state_dict(), "optimizer", "best_acc"} -> best, latest; the distiller is
    # wrapped in DataParallel (module.) and holds student, teacher and the method's modules
    state = {f"module.student.{k}": v for k, v in model.state_dict().items()}
    teacher = _source_model(seed=1)
    state.update({f"module.teacher.{k}": v for k, v in teacher.state_dict().items()})
    state["module.conv_reg.weight"] = torch.randn(64, 32, 1, 1)  # FitNet's regressor
    return {"epoch": 240, "model": state, "optimizer": _optimizer_state(model)[1],
            "best_acc": torch.tensor(73.9)}


def torchdistill(model):
    # torchdistill/common/main_util.py save_ckpt: {'model', 'optimizer', 'best_value',
    # 'lr_scheduler': lr_scheduler.state_dict(), 'args': args} (args: argparse.Namespace)
    optimizer, state = _optimizer_state(model)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [150, 180, 210])
    args = argparse.Namespace(config="configs/sample/cifar100/kd.yaml", device="cuda",
                              log=None, start_epoch=0, seed=None, test_only=False,
                              world_size=1, dist_url="env://")
    return {"model": model.state_dict(), "optimizer": state, "best_value": 0.7421,
            "lr_scheduler": scheduler.state_dict(), "args": args}


def torchdistill_with_config(model):
    # earlier torchdistill (examples/image_classification.py save_ckpt): also 'config', the
    # parsed yaml
    checkpoint = torchdistill(model)
    checkpoint["config"] = {"train": {"num_epochs": 240}, "models": {"student_model": {}}}
    return checkpoint


def reviewkd(model):
    # dvlab-research/ReviewKD CIFAR-100/train.py: torch.save(cnn.state_dict(), ...'_best.pt');
    # its util/misc.py load_teacher_weight reads the bare state dict
    return model.state_dict()


def torchvision_legacy(model):
    # torchvision's oldest weight files (resnet18-5c106cde.pth, 2017): a bare state dict from
    # a PyTorch without BatchNorm's num_batches_tracked
    return _without_num_batches_tracked(model.state_dict())


def imagenet_example(model):
    # pytorch/examples imagenet/main.py save_checkpoint({'epoch', 'arch', 'state_dict':
    # model.state_dict() (DataParallel: module.), 'best_acc1', 'optimizer', 'scheduler'},
    # 'checkpoint.pth.tar')
    optimizer, state = _optimizer_state(model)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 30)
    return {"epoch": 90, "arch": ARCH,
            "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
            "best_acc1": torch.tensor(69.76), "optimizer": state,
            "scheduler": scheduler.state_dict()}


LAYOUTS = {"ckpt_epoch_240.pth": repdistiller_teacher, "resnet8_best.pth": simkd_student,
           "student_best": mdistiller_student, "best": mdistiller_distiller,
           "kd.pt": torchdistill, "kd_old.pt": torchdistill_with_config,
           "cifar100_resnet8__best.pt": reviewkd, "resnet8-5c106cde.pth": torchvision_legacy,
           "checkpoint.pth.tar": imagenet_example}


def _write(layout, path):
    model = _source_model()
    torch.save(layout(model), path)
    return model


@pytest.mark.parametrize("name", LAYOUTS)
def test_every_layout_loads_as_its_source_model(tmp_path, name):
    path = tmp_path / name
    source = _write(LAYOUTS[name], path)
    teacher, _ = load_teacher(path, 100, ARCH)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(teacher(x), source(x))
    student = create_pretrained(ARCH, 100, str(path)).eval()
    with torch.no_grad():
        assert torch.equal(student(x), source(x))


@pytest.mark.parametrize("name", ["kd.pt", "best", "checkpoint.pth.tar"])
def test_foreign_layouts_score_and_teach(tmp_path, cifar100_micro, name):
    path = tmp_path / name
    _write(LAYOUTS[name], path)
    common = ["--dataset", "cifar100", "--data_folder", str(cifar100_micro), "--batch_size", "8"]
    train_teacher.main(["--evaluate", str(path), "--model", ARCH, *common,
                        "--save_folder", str(tmp_path / "eval")])
    record = json.loads(next((tmp_path / "eval").glob("*.eval.json")).read_text())
    assert record["model_name"] == ARCH and record["images"] == 10
    train_student.main(["--path_t", str(path), "--model_t", ARCH, "--distill", "kd",
                        "--model_s", "resnet8", *common, "--epochs", "1",
                        "--save_folder", str(tmp_path / "save"), "--print_freq", "1000"])
    assert (next((tmp_path / "save" / "students").iterdir()) / "best.pth").is_file()


def test_timm_safetensors_and_bin(tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(0)
    source = create_model("timm:resnet10t", num_classes=10).eval()
    # timm's hub files: model.safetensors (safetensors.torch.save_file of the state dict) and
    # pytorch_model.bin (torch.save of the state dict)
    save_file(source.state_dict(), str(tmp_path / "model.safetensors"))
    torch.save(source.state_dict(), tmp_path / "pytorch_model.bin")
    x = torch.randn(2, 3, 64, 64)
    for name in ("model.safetensors", "pytorch_model.bin"):
        teacher, _ = load_teacher(tmp_path / name, 10, "timm:resnet10t")
        with torch.no_grad():
            assert torch.equal(teacher(x), source(x))


def test_a_truncated_safetensors_file_is_one_line(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "model.safetensors"
    save_file(_source_model().state_dict(), str(path))
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match="safetensors file that cannot be read"):
        load_file(path, "teacher checkpoint")


def test_missing_buffers_load_as_pytorch_does_and_nothing_else(tmp_path):
    model = _source_model()
    state = _without_num_batches_tracked(model.state_dict())
    fresh = create_model(ARCH, num_classes=100)
    load_weights(fresh, state, "file")  # BatchNorm fills what PyTorch < 0.4.1 did not write
    fresh.load_state_dict(state, strict=True)  # the same verdict as PyTorch's strict load
    del state["conv1.weight"]
    with pytest.raises(UserError, match=r"1 missing keys \(e.g. conv1.weight\)"):
        load_weights(create_model(ARCH, num_classes=100), state, "file")
    with pytest.raises(RuntimeError):
        create_model(ARCH, num_classes=100).load_state_dict(state, strict=True)
    state = dict(model.state_dict(), extra=torch.zeros(1))
    with pytest.raises(UserError, match=r"1 unexpected keys \(e.g. extra\)"):
        load_weights(create_model(ARCH, num_classes=100), state, "file")
    with pytest.raises(UserError, match="shape mismatches"):
        load_weights(create_model(ARCH, num_classes=10), model.state_dict(), "file")


def test_simkd_students_of_simkds_code_are_refused_as_teachers_but_start_a_student(tmp_path):
    model = _source_model()
    path = tmp_path / "resnet8_best.pth"
    torch.save(dict(simkd_student(model), proj={"0.weight": torch.zeros(1)}), path)
    with pytest.raises(UserError, match="SimKD student.*--pretrained"):
        load_teacher(path, 100, ARCH)
    student = create_pretrained(ARCH, 100, str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(student(x), model(x))


class _Marker:
    """Unpickling it would create a file: the test of a checkpoint that runs code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.mark.parametrize("content", ["module", "code"])
def test_files_needing_more_than_weights_only_are_refused(tmp_path, content):
    path = tmp_path / "model.pth"
    marker = tmp_path / "ran"
    torch.save(_source_model() if content == "module" else {"model": _Marker(marker)}, path)
    with pytest.raises(UserError) as e:
        load_teacher(path, 100, ARCH)
    text = str(e.value)
    assert "\n" not in text and "would run code when unpickled" in text
    assert "torch.save(" in text  # how to convert a file one trusts
    if content == "module":
        assert "ResNet object" in text
    assert not marker.exists()


def test_state_dict_of_names_what_a_file_holds():
    with pytest.raises(UserError, match="holds no model weights .it holds epoch, optimizer"):
        state_dict_of({"epoch": 3, "optimizer": {}}, "x.pth", "teacher checkpoint")
    buffer = io.BytesIO()
    torch.save([1, 2], buffer)
    with pytest.raises(UserError, match="it holds a list"):
        state_dict_of([1, 2], "x.pth", "teacher checkpoint")


def _model_file(folder, marker):
    """A user's model file that leaves ``marker`` when imported."""
    path = folder / "net.py"
    path.write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
                    "from models import create_model\n\n\ndef build(num_classes):\n"
                    f"    return create_model({ARCH!r}, num_classes=num_classes)\n")
    return path


def test_a_model_file_named_by_a_checkpoint_is_never_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    net = _model_file(tmp_path, marker)
    monkeypatch.chdir(tmp_path)
    state = _source_model().state_dict()
    simkd = {"builder": "simkd", "kwargs": {"student": "net.py:build"}, "state_dict": state}
    cases = {"stored.pth": {"model": state, "model_name": f"{net}:build"},
             "relative.pth": {"model": state, "model_name": "net.py:build"},
             "deployed.pth": {"model": state, "model_name": ARCH, "deploy": simkd}}
    for name, checkpoint in cases.items():
        torch.save(checkpoint, tmp_path / name)
    folder = tmp_path / "S:net.py:build_T:resnet8_cifar100_kd_r:1_a:1_b:0_1"
    folder.mkdir()
    torch.save({"model": state}, folder / "best.pth")
    for path in [tmp_path / name for name in cases] + [folder / "best.pth"]:
        with pytest.raises(UserError, match=r"never imported .* pass --model_t \S*net.py:build"):
            load_teacher(path, 100)
        assert not marker.exists()
    teacher, _ = load_teacher(tmp_path / "stored.pth", 100, f"{net}:build")  # named by the user
    assert marker.exists()


def test_a_model_files_checkpoint_names_it_from_any_directory(tmp_path, monkeypatch,
                                                              cifar100_micro):
    net = _model_file(tmp_path, tmp_path / "imported")
    monkeypatch.chdir(tmp_path)
    train_teacher.main(["--model", "net.py:build", "--dataset", "cifar100", "--data_folder",
                        str(cifar100_micro), "--epochs", "1", "--batch_size", "10",
                        "--save_folder", "save", "--print_freq", "1000"])
    best = next((tmp_path / "save" / "teachers").iterdir()) / "best.pth"
    stored = torch.load(best, map_location="cpu", weights_only=True)["model_name"]
    assert stored == f"{net.resolve()}:build"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(UserError, match=f"pass --model_t {stored}$"):
        load_teacher(best, 100)
    teacher, _ = load_teacher(best, 100, stored)
    assert teacher.model_name == stored

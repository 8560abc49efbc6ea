"""helper/teachers/normalization.py: a teacher trained on inputs normalised otherwise than the run's data
sees its own normalisation (a per-channel affine map before its forward, checked by hand in
float64), in a real train_student.py run too; the data sets' normalisations are the loaders'
own; bad records and channel counts are one-line errors."""
import pytest
import torch

import helper.teachers.setup
from helper.run.checkpoint import load_teacher
from helper.core.errors import UserError
from helper.teachers.normalization import Normalization, data_normalization, renormalize
from helpers import read_summary, run_student, save_teacher
from models import create_model

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def test_the_map_by_hand():
    own = Normalization((0.2, 0.4, 0.6), (0.5, 0.25, 0.125))
    run = Normalization((0.5, 0.5, 0.5), (0.2, 0.3, 0.4))
    model = renormalize(torch.nn.Identity(), own, run)
    pixels = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    x_run = torch.empty_like(pixels)
    x_own = torch.empty_like(pixels)
    for c in range(3):  # per channel, in plain arithmetic
        x_run[:, c] = (pixels[:, c] - run.mean[c]) / run.std[c]
        x_own[:, c] = (pixels[:, c] - own.mean[c]) / own.std[c]
    assert torch.allclose(model(x_run), x_own, rtol=0, atol=1e-12)
    assert model(x_run.float()).dtype == torch.float32
    assert torch.allclose(model(x_run.float()), x_own.float(), rtol=0, atol=1e-6)
    assert not model.state_dict()  # the constants stay out of the state dict
    assert renormalize(torch.nn.Identity(), run, run)(x_run) is x_run  # nothing to map
    assert renormalize(torch.nn.Identity(), None, run)(x_run) is x_run  # unknown: as the run


@pytest.mark.parametrize("dataset", ["cifar100", "mnist"])
def test_data_normalization_is_the_loaders(dataset, cifar100_tiny, mnist_small):
    from dataset import build_loaders
    folder = cifar100_tiny if dataset == "cifar100" else mnist_small
    _, val, _ = build_loaders(dataset, folder, 16, torch.device("cpu"))
    want = data_normalization(dataset)
    assert val.mean.flatten().tolist() == pytest.approx(want.mean, abs=1e-7)
    assert val.std.flatten().tolist() == pytest.approx(want.std, abs=1e-7)
    assert data_normalization("cifar10") == data_normalization("cifar100")
    assert data_normalization("imagenet") == Normalization(*IMAGENET)
    with pytest.raises(UserError, match="unknown dataset"):
        data_normalization("svhn")


def _teacher_file(path, normalization):
    save_teacher("resnet8", path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["normalization"] = normalization
    torch.save(checkpoint, path)
    return path


def test_bad_records_are_one_line(tmp_path):
    path = _teacher_file(tmp_path / "t.pth", {"mean": [0.5]})
    with pytest.raises(UserError, match="unreadable 'normalization'"):
        load_teacher(path, 100, dataset="cifar100")
    path = _teacher_file(tmp_path / "gray.pth", {"mean": [0.1307], "std": [0.3081]})
    with pytest.raises(UserError, match="1-channel inputs, this data set has 3"):
        load_teacher(path, 100, dataset="cifar100")
    # a checkpoint of this toolbox without the record: its data set's normalisation
    save_teacher("resnet8", tmp_path / "own.pth")
    checkpoint = torch.load(tmp_path / "own.pth", weights_only=True)
    checkpoint["dataset"] = "cifar100"
    torch.save(checkpoint, tmp_path / "own.pth")
    teacher, _ = load_teacher(tmp_path / "own.pth", 100, dataset="cifar100")
    assert not teacher._forward_pre_hooks


def test_a_student_run_distils_from_the_teachers_own_normalisation(cifar100_tiny, tmp_path,
                                                                   monkeypatch):
    """A real one-epoch KD run: the teacher train_student.py loads maps the run's inputs to its
    own normalisation (its logits are those of the plain model on its own inputs)."""
    path = _teacher_file(tmp_path / "t.pth", {"mean": IMAGENET[0], "std": IMAGENET[1]})
    loaded = []

    def spy(*args, **kwargs):
        teacher, checkpoint = load_teacher(*args, **kwargs)
        loaded.append(teacher)
        return teacher, checkpoint
    monkeypatch.setattr(helper.teachers.setup, "load_teacher", spy)  # the student run's loader
    run = run_student("kd", "resnet8", cifar100_tiny, tmp_path / "save", teacher=path)
    assert read_summary(run)["finished"]
    (teacher,) = loaded
    assert teacher.input_normalization == Normalization(*IMAGENET)
    plain = create_model("resnet8", 100).eval()
    plain.load_state_dict(teacher.state_dict())
    cifar = data_normalization("cifar100")
    pixels = torch.rand(2, 3, 32, 32, dtype=torch.float64)

    def norm(mean, std):
        return ((pixels - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1))
                / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)).float()
    with torch.no_grad():
        got = teacher.eval()(norm(cifar.mean, cifar.std))
        want = plain(norm(*IMAGENET))
    assert torch.allclose(got, want, rtol=0, atol=1e-4 * want.abs().max().item())
    assert (plain(norm(cifar.mean, cifar.std)) - want).abs().max() > 1e-2 * want.abs().max()

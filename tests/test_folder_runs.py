"""End-to-end runs on folder data (real CIFAR-10 JPEGs) with torchvision's ImageNet models:
the DataLoader and DALI paths through the entry scripts, and --pretrained."""
import json

import pytest
import torch

import train_student
import train_teacher
from conftest import SHARED_DATA
from dataset.folder import extract_image_archive
from helper.run.checkpoint import create_pretrained
from models import create_model

ARCHIVE = SHARED_DATA / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    if not ARCHIVE.is_file():
        pytest.skip(f"{ARCHIVE} not found")
    return extract_image_archive(ARCHIVE, tmp_path_factory.mktemp("jpegs"), per_class=8,
                                 classes=("airplane", "cat"), splits=("train", "test"))


@pytest.mark.parametrize("loader", [["--num_workers", "0"], ["--dali", "cpu", "--num_workers", "1"]],
                         ids=["torchvision", "dali"])
def test_teacher_and_student_on_a_jpeg_folder(jpegs, tmp_path, loader):
    if "--dali" in loader:
        pytest.importorskip("nvidia.dali")
    common = ["--dataset", "folder", "--data_folder", str(jpegs), "--save_folder", str(tmp_path),
              "--epochs", "1", "--batch_size", "8", "--print_freq", "1000", *loader]
    train_teacher.main(["--model", "resnet18", *common])
    teacher = tmp_path / "teachers" / "resnet18_vanilla_folder_trial_0" / "best.pth"
    assert json.loads((teacher.parent / "summary.json").read_text())["finished"]
    train_student.main(["--path_t", str(teacher), "--model_s", "mobilenet_v2", "--distill", "at",
                        "-d", "1", *common])
    run = tmp_path / "students" / "S:mobilenet_v2_T:resnet18_folder_at_r:1_a:1_b:1000_0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["num_classes"] == 2


def test_pretrained_file_keeps_features_and_refreshes_another_classifier(tmp_path):
    source = create_model("resnet8", 10)
    path = tmp_path / "resnet8_c10.pth"
    torch.save({"model": source.state_dict()}, path)
    same = create_pretrained("resnet8", 10, str(path))
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in same.state_dict().items())
    other = create_pretrained("resnet8", 100, str(path))
    assert torch.equal(other.conv1.weight, source.conv1.weight)
    assert other.fc.weight.shape == (100, 64)


def test_pretrained_errors(tmp_path, capsys):
    from helper.core.errors import UserError
    with pytest.raises(UserError, match="no such file"):
        create_pretrained("resnet8", 10, str(tmp_path / "missing.pth"))
    torch.save({"model": create_model("resnet14", 10).state_dict()}, tmp_path / "r14.pth")
    with pytest.raises(UserError, match="does not fit resnet8"):
        create_pretrained("resnet8", 10, str(tmp_path / "r14.pth"))

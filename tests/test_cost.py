"""helper.cost: parameters and MACs against hand counts, the timing's repeats, and
``helper.report --cost`` on a teacher and its KD student (real MNIST, 1 epoch each)."""
import pytest
import torch
import torch.nn as nn

import train_student
import train_teacher
from helper import cost, report
from models import create_model


def test_parameters_and_macs_of_an_mlp_match_hand_counts():
    model = create_model("mlp_800", num_classes=10).eval()
    layers = [(784, 800), (800, 800), (800, 10)]
    assert cost.count_parameters(model) == sum(i * o + o for i, o in layers)
    assert cost.count_macs(model, (1, 28, 28)) == sum(i * o for i, o in layers)


def test_macs_of_a_convolution_count_every_output_once():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).eval()
    assert cost.count_macs(conv, (3, 8, 8)) == 8 * 8 * 8 * (3 * 3 * 3)  # BN and ReLU: none


def test_macs_count_leaves_a_model_in_training_mode_as_it_was():
    """The count's pass is models.base.dummy_pass: eval mode, the mode and the BatchNorm
    statistics of a model passed in training mode are left as they were."""
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).train()
    bn = conv[1]
    before = [t.clone() for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked)]
    assert cost.count_macs(conv, (3, 8, 8)) == 8 * 8 * 8 * (3 * 3 * 3)
    assert conv.training and bn.training
    assert all(torch.equal(a, b) for a, b in zip(before, (bn.running_mean, bn.running_var,
                                                          bn.num_batches_tracked)))


def test_median_takes_warmup_then_at_least_the_minimum_of_repeats(monkeypatch):
    monkeypatch.setattr(cost, "BUDGET_S", 0.0)
    calls = []
    assert cost.median_seconds(lambda: calls.append(1)) >= 0
    assert len(calls) == cost.WARMUP + cost.MIN_REPEATS
    monkeypatch.setattr(cost, "BUDGET_S", 1e9)
    calls.clear()
    cost.median_seconds(lambda: calls.append(1))
    assert len(calls) == cost.WARMUP + cost.MAX_REPEATS


def test_data_input_sizes():
    assert cost.data_input_size("cifar100", {}) == (3, 32, 32)
    assert cost.data_input_size("mnist", {}) == (1, 28, 28)
    assert cost.data_input_size("imagenet", {"input_size": None}) == (3, 224, 224)
    assert cost.data_input_size("cub200", {"input_size": 160}) == (3, 160, 160)


@pytest.fixture(scope="module")
def kd_runs(mnist_small, tmp_path_factory):
    """A teacher (mlp_1200) and its KD student (mlp_800), one epoch on 2,000 MNIST images."""
    save = tmp_path_factory.mktemp("cost_runs")
    common = ["--dataset", "mnist", "--data_folder", str(mnist_small), "--epochs", "1",
              "--save_folder", str(save), "--num_workers", "0", "--print_freq", "1000"]
    train_teacher.main(["--model", "mlp_1200", *common])
    teacher = save / "teachers" / "mlp_1200_vanilla_mnist_trial_0" / "best.pth"
    train_student.main(["--path_t", str(teacher), "--model_s", "mlp_800", "--distill", "kd",
                        *common])
    return save


def _cost_rows(out):
    return [line.strip("| ").split(" | ") for line in out.splitlines()
            if line.startswith("| mnist |")]


@pytest.fixture
def quick_timing(monkeypatch):
    monkeypatch.setattr(cost, "BUDGET_S", 0.0)
    monkeypatch.setattr(cost, "LARGE_BATCH", 8)


def test_report_prints_the_cost_of_teacher_and_student(kd_runs, capsys, quick_timing):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    report.main([str(kd_runs), "--cost"])
    out = capsys.readouterr().out
    assert f"Measured on {cost.cpu_name()}" in out and f"{torch.get_num_threads()} threads" in out
    rows = _cost_rows(out.split("Measured on")[1])
    assert [(r[1], r[2]) for r in rows] == [("teacher", "mlp_1200"), ("student", "mlp_800")]
    for row, params in zip(rows, ("2.40M", "1.28M")):
        assert row[5] == params and "n/a" not in row
        assert all(float(cell) > 0 for cell in row[7:11]), row
    # top-1 beside the cost: the accuracy table's best top-1
    accuracy = {r[2]: r[5].split(" ±")[0] for r in _cost_rows(out.split("Measured on")[0])}
    assert rows[0][4] == accuracy["mlp_1200"] and rows[1][4] == accuracy["mlp_800"]


def test_without_onnxruntime_the_onnx_columns_say_how_to_get_them(kd_runs, capsys, monkeypatch,
                                                                  quick_timing):
    monkeypatch.setattr(cost, "onnx_available", lambda: False)
    report.main([str(kd_runs), "--cost"])
    out = capsys.readouterr().out
    assert "pip install onnx onnxruntime" in out
    rows = _cost_rows(out.split("Measured on")[1])
    assert len(rows) == 2 and all(r[9:11] == ["n/a", "n/a"] for r in rows)


def test_a_teacher_that_cannot_be_loaded_is_named_in_one_line(kd_runs, tmp_path, quick_timing,
                                                              monkeypatch):
    monkeypatch.setattr(cost, "onnx_available", lambda: False)
    student = next((kd_runs / "students").iterdir())
    entry = {"role": "", "status": "done", "best_acc": 50.0, "dataset": "mnist",
             "distill": "kd", "path": str(student),
             "args": {"path_t": str(tmp_path / "gone.pth")}}
    warnings = []
    table = cost.cost_table({"key": [entry]}, warn=warnings.append)
    assert [r[1:5] for r in _cost_rows(table)] == [["student", "mlp_800", "kd", "50.00"]]
    assert len(warnings) == 1 and "gone.pth" in warnings[0]
    assert warnings[0].startswith("warning: no cost for")

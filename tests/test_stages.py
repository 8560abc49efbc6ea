"""Multi-stage training: stages run in order with their own optimizer and schedule, and
--resume continues exactly across a stage boundary."""
import torch
import torch.nn.functional as F

from dataset import build_loaders
from distillers import Distiller, RunInfo, Stage, Weights
from helper.run.options import parse_teacher_args
from helper.run.trainer import fit
from models import create_model


class TwoStage(Distiller):
    """An 'init' stage trains only the extra head on a toy loss, then the student trains."""
    name = "two_stage_test"
    default_weights = Weights(cls=1.0)  # cross-entropy (and the init head's loss) only

    @classmethod
    def requires_teacher(cls, options):
        return False

    def __init__(self, student):
        super().__init__(student, None, run=RunInfo(epochs=2))
        self.head = torch.nn.Linear(10, 10)
        self.seen = []

    def stages(self):
        return [Stage("init", 2, lr=0.01, lr_decay_epochs=(1,), selects_best=False),
                Stage("main", self.run_info.epochs)]

    def stage_parameters(self, stage):
        return list(self.head.parameters()) if stage.name == "init" else self.trainable_parameters()

    def on_epoch_start(self, epoch, train_loader=None, stage=None):
        super().on_epoch_start(epoch, train_loader, stage)
        self.seen.append((self.stage, epoch))

    def method_losses(self, *, logits_s, targets, **_):
        if self.stage == "init":
            return {"init": F.cross_entropy(self.head(logits_s.detach()), targets)}
        return {}


def _config():
    return parse_teacher_args(["--model", "mlp_800", "--dataset", "mnist", "--epochs", "2",
                               "--learning_rate", "0.05", "--lr_decay_epochs", "1",
                               "--print_freq", "1000"])


def _run(mnist_small, folder, epochs_done=None, resume=None):
    torch.manual_seed(0)
    train, val, info = build_loaders("mnist", mnist_small, 256, "cpu", seed=1)
    distiller = TwoStage(create_model("mlp_800", 10))
    if epochs_done is not None:  # stop early by shortening the main stage
        distiller.stages = lambda: [Stage("init", 2, lr=0.01, lr_decay_epochs=(1,), selects_best=False),
                                         Stage("main", epochs_done - 2)][: 1 if epochs_done <= 2 else 2]
    summary = fit(_config(), distiller, train, val, folder, {"model_name": "mlp_800"},
                  resume=resume, log=lambda *_: None)
    return distiller, summary


def test_stages_run_in_order_with_their_own_optimizer(mnist_small, tmp_path):
    distiller, summary = _run(mnist_small, tmp_path)
    assert distiller.seen == [("init", 1), ("init", 2), ("main", 1), ("main", 2)]
    assert summary["epochs_done"] == 4 and summary["stages"] == ["init", "main"]
    assert summary["best_epoch"] in (3, 4)  # init epochs do not compete for best.pth
    last = torch.load(tmp_path / "last.pth", weights_only=True)
    assert last["stage"] == "main" and last["epoch"] == 4
    # The student changed only in the main stage: a run of the init stage alone leaves it as built.
    init_only, _ = _run(mnist_small, tmp_path / "init_only", epochs_done=2)
    torch.manual_seed(0)
    fresh = create_model("mlp_800", 10).state_dict()
    assert all(torch.equal(init_only.student.state_dict()[k], fresh[k]) for k in fresh)
    assert not torch.equal(init_only.head.weight, TwoStage(create_model("mlp_800", 10)).head.weight)


def test_resume_across_the_stage_boundary(mnist_small, tmp_path):
    full, _ = _run(mnist_small, tmp_path / "full")
    _run(mnist_small, tmp_path / "part", epochs_done=2)
    resume = torch.load(tmp_path / "part" / "last.pth", weights_only=False)
    resumed, _ = _run(mnist_small, tmp_path / "part", resume=resume)
    assert resumed.seen == [("main", 1), ("main", 2)]
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key

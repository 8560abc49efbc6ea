"""Zhang, Xiang, Hospedales & Lu 2018, "Deep Mutual Learning" (CVPR): ``--distill dml``."""
from dataclasses import dataclass
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.core.errors import UserError
from models import create_model
from models.base import fit_to_data
from models.registry import unknown_model
from .base import Distiller, Reads, Weights
from .kd import kd_loss
from .options import MethodOptions, option, require
from .registry import Reference, register_distiller

KL_MODES = ("mean", "sum", "ensemble")


def mutual_loss(logits: torch.Tensor, others: List[torch.Tensor], T: float = 1.0,
                mode: str = "mean") -> torch.Tensor:
    """One network's mutual term: ``KL(p_other || p_self)`` (batch mean, times ``T^2``) with
    the other networks' predictions as constants, averaged over them (``mean``, the paper's
    Eq. 10), summed (``sum``, the official code) or against the mean of their probabilities
    (``ensemble``, the paper's DML_e)."""
    others = [o.detach() for o in others]
    if mode == "ensemble":
        p = torch.stack([F.softmax(o / T, dim=1) for o in others]).mean(0)
        return F.kl_div(F.log_softmax(logits / T, dim=1), p, reduction="batchmean") * T * T
    total = torch.stack([kd_loss(logits, o, T) for o in others]).sum()
    return total / len(others) if mode == "mean" else total


@register_distiller("dml")
class DML(Distiller):
    """Deep mutual learning: the student and its peers (``--dml_peers``, default one peer of
    the student's architecture) train together from scratch, without a teacher. Each network
    ``k`` of the ``K`` minimises ``cls * CE_k + beta * mutual_k`` with ``mutual_k`` the mean
    over the others ``l`` of ``KL(p_l || p_k)`` (``mutual_loss``). The peers are the method's
    extras: trained by the same optimizer, saved in the student's checkpoints (``--resume``
    continues them exactly), validated every epoch and written as ``peer<i>_best.pth`` /
    ``peer<i>_last.pth`` beside ``best.pth`` (``extra_models``): each loads alone as a
    ``--path_t`` or for ``--evaluate``. Logged terms: ``cls`` and ``dml`` (the student's),
    ``peers_cls`` and ``peers_dml`` (the peers', summed).

    Paper: Zhang et al., CVPR 2018. Official code: YingZhangDUT/Deep-Mutual-Learning
    (TensorFlow, ``train_models.py``: ``_tower_loss``, ``kl_loss_compute``). Defaults: ``-c 1
    -b 1`` (both: CE plus the unweighted KL), temperature 1 (neither uses one).
    Paper vs code, and what we do:
      - The code gives each network its own Adam optimizer and runs their updates one after
        the other, each ``sess.run`` taking a new batch. We update every network in the same
        step, on the same batch, with one optimizer (``--optimizer``, SGD by default as every
        recipe here). Each network's term treats the others' predictions as constants, as the
        code's per-network gradients do, so the gradient each network gets from the summed
        loss is exactly that of its own loss; with SGD (state per parameter) one optimizer
        over all networks equals one per network with the same settings. The alternating
        schedule is not offered: it needs several optimizer steps per batch.
      - With more than two networks the paper averages the KL terms over the others
        (``1/(K-1)``, default ``--dml_kl mean``); the code sums them (``--dml_kl sum``). The
        paper's DML_e variant (the others' mean prediction as one target) is ``--dml_kl
        ensemble``. With one peer all three are the same.
      - The code's KL adds 1e-8 inside the log; we compute it exactly in log space.
      - ``--dml_T`` (default 1, as both) softens both sides and scales by ``T^2`` as KD.
    """

    reference = Reference(
        label="DML",
        row=30,
        paper="Zhang et al. 2018 (CVPR)",
        code="YingZhangDUT/Deep-Mutual-Learning",
        defaults="one peer of `--model_s`'s architecture, `--dml_T 1 --dml_kl mean`",
        extra_params="1,233,540 (the peer)",
        notes="no teacher (drop `--path_t`); every network learns in one step with one optimizer "
              "(the official code alternates Adam updates); `--dml_kl sum` as the code, "
              "`ensemble` the paper's DML_e; each peer saved as `peer<i>_best.pth`/`_last.pth`",
        usage="[--dml_peers MODEL,...]",
    )

    reads = Reads("none", "logits")  # no teacher: its peers
    default_weights = Weights(cls=1.0, div=0.0, beta=1.0)

    @dataclass(frozen=True)
    class Options(MethodOptions):
        dml_peers: str = option("", "the peers' architectures, comma-separated (default: one "
                                "peer of --model_s's)", "--dml-peers", metavar="MODEL[,MODEL...]")
        dml_T: float = option(1.0, "temperature of the mutual KL terms (paper and code: 1)",
                              "--dml-T")
        dml_kl: str = option("mean", "several peers: mean of the KL terms (paper), sum (official "
                             "code), or ensemble (KL to the peers' mean prediction, DML_e)",
                             "--dml-kl", choices=KL_MODES)

        def peer_names(self) -> List[str]:
            return [n.strip() for n in self.dml_peers.split(",") if n.strip()]

        def check(self):
            require(self.dml_T > 0, f"--dml_T must be positive, got {self.dml_T:g}")
            require(not self.dml_peers.strip() or len(self.peer_names()) == len(
                self.dml_peers.split(",")), f"--dml_peers {self.dml_peers!r} has an empty name; "
                "give architectures separated by single commas, e.g. resnet8x4,wrn_16_2")
            for name in self.peer_names():
                reason = unknown_model(name)
                require(not reason, f"--dml_peers: {reason}")

    @classmethod
    def requires_teacher(cls, options) -> bool:
        return False

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        if self.div_weight and teacher is None:
            raise UserError(f"--distill dml trains without a teacher, so -d {self.div_weight:g} "
                            "weighs no KD term; drop -d (or combine: --distill kd+dml with "
                            "--path_t)")
        names = self.options.peer_names()
        if not names:
            if getattr(student, "model_name", None) is None:
                raise UserError("--distill dml: the student was not built by name; name the "
                                "peers with --dml_peers MODEL[,MODEL...]")
            names = [student.model_name]
        self.peer_names = names
        self.peers = nn.ModuleList(create_model(n, num_classes=self.run_info.num_classes)
                                   for n in names)
        if self.run_info.input_size is not None:
            for peer in self.peers:
                fit_to_data(peer, self.run_info.input_size, "DML peer")
        self.T, self.mode = float(self.options.dml_T), self.options.dml_kl

    def uses_teacher_output(self):
        return False

    def method_losses(self, *, logits_s, targets, images, **batch):
        nets = [logits_s, *(peer(images) for peer in self.peers)]
        mutual = [mutual_loss(z, nets[:k] + nets[k + 1:], self.T, self.mode)
                  for k, z in enumerate(nets)]
        losses = {"dml": self.beta * mutual[0]}
        if self.cls_weight:  # the peers see the student's images: its CE term, its targets
            ce = sum(self.cls_loss(z, targets, batch) for z in nets[1:])  # (MixUp: soft ones)
            losses["peers_cls"] = self.cls_weight * ce
        losses["peers_dml"] = self.beta * sum(mutual[1:])
        return losses

    def extra_models(self):
        return {f"peer{i + 1}": (name, peer)
                for i, (name, peer) in enumerate(zip(self.peer_names, self.peers))}

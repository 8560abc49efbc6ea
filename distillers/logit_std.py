"""Sun et al. 2024, "Logit Standardization in Knowledge Distillation" (CVPR).

A pre-process, not a method of its own: ``--logit_stand`` (added by ``kd.py``) switches it on
for ``--distill kd`` and ``--distill dkd``. Student and teacher logits are each z-scored per
sample over the classes before they are divided by the (base) temperature, so the student
matches the teacher's logit *relations* rather than their range.

Reference code: github sunshangquan/logit-standardization-KD, ``normalize`` in
``mdistiller/distillers/KD.py`` and ``DKD.py``, flags in ``tools/train.py``, defaults in
``mdistiller/engine/cfg.py``. Their CIFAR-100 settings with the switch (what this toolbox's
defaults do *not* change, since ``-c``, ``-d`` and ``--kd_T`` are shared flags; pass them):
  - KD: ``-c 0.1 -d 9 --kd_T 2 --logit_stand`` (cfg.py: CE 0.1, KD 9, T 2, confirmed
    intentional by the author in issue #25; the CTKD+ours script uses ``-r 0.1 -a 9 --kd_T 2``).
  - DKD: ``--kd_T 2 --logit_stand -b 9`` (``tools/train.py`` multiplies DKD's alpha and beta
    by ``--kd-weight 9`` and sets T to ``--base-temp 2``; CE stays 1). An older ``train.py``
    set beta to ``alpha * 9`` and left T at 4, a bug fixed later.

Paper vs code:
  - The paper's standard deviation is the population one (divide by K); the code uses
    ``torch.std`` (unbiased, K - 1) and adds 1e-7 to it. We follow the code; the difference
    is a factor sqrt((K-1)/K), i.e. a 0.5% change of temperature for 100 classes.
  - The CTKD copy in the same repository has no epsilon; negligible.
"""
import torch

from .registry import Reference, register_switch

register_switch(Reference(
    row=36, label="logit standardization", flags="`--logit_stand`", paper="Sun et al. 2024",
    code="sunshangquan/logit-standardization-KD",
    defaults="their KD setting: `-c 0.1 -d 9 --kd_T 2`",
    notes="applies to any KD term and to DKD"))

EPS = 1e-7


def standardize(logits: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Z-score each row over the classes: ``(z - mean) / (std + eps)``, unbiased std."""
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True)
    return (logits - mean) / (std + eps)


def maybe_standardize(logits_s: torch.Tensor, logits_t: torch.Tensor, on: bool):
    """Both logits standardized when ``on``, unchanged otherwise."""
    if not on:
        return logits_s, logits_t
    return standardize(logits_s), standardize(logits_t)

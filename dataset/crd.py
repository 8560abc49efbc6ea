"""CRD's contrast indices (Tian et al. 2020): the ``contrast_index`` batch key.

As RepDistiller's ``CIFAR100InstanceSample`` (``dataset/cifar100.py``): each training sample
gets ``K = --nce_k`` negatives drawn uniformly without replacement from the samples of the
*other* classes, in both modes. Column 0 is the positive: the sample itself (``--mode exact``)
or a random sample of its class (``--mode relax``).

Differences from the reference:
- When fewer than K negatives exist the reference silently samples with replacement; we stop
  with a UserError (lower ``--nce_k``).
- Draws come from one ``torch.Generator`` per epoch on the loader's device, seeded from the
  loader's ``(seed, epoch, rank)``, so an epoch's contrast indices are reproducible (``--resume``
  is exact) on a given device type; the reference uses numpy's global RNG in the workers.
- Sampling is vectorised over the batch (random keys + top-k per row); no per-class lists:
  the dataset is sorted by class once, and "other classes" is the sorted order with the
  sample's own class block cut out.
"""
import torch

from helper.core.errors import UserError

from .loader_wrapper import LoaderWrapper

_SALT = 0xC4D  # keeps CRD's stream apart from the loader's own (same seed and epoch)


class ContrastSampler:
    """Draws ``(B, K + 1)`` contrast indices for batches of a data set with labels ``targets``."""

    def __init__(self, targets: torch.Tensor, k: int, mode: str = "exact", device="cpu"):
        if mode not in ("exact", "relax"):
            raise UserError(f"--mode must be exact or relax, got {mode!r}")
        if k < 1:
            raise UserError(f"--nce_k must be at least 1, got {k}")
        self.device = torch.device(device)
        targets = targets.to(self.device, torch.int64)
        self.n = len(targets)
        self.k, self.mode = int(k), mode
        self.order = torch.argsort(targets, stable=True)  # data set indices grouped by class
        self.count = torch.bincount(targets)              # samples per class
        self.start = torch.cumsum(self.count, 0) - self.count  # first position of each class
        present = self.count[self.count > 0]
        fewest = self.n - int(present.max())              # negatives of the largest class
        if self.k > fewest:
            raise UserError(f"--nce_k {self.k} is more than the {fewest} negatives (samples of "
                            f"other classes) available in a training set of {self.n}; lower --nce_k")
        self.width = self.n - int(present.min())          # negatives of the smallest class

    def sample(self, index: torch.Tensor, targets: torch.Tensor, generator: torch.Generator):
        count = self.count[targets][:, None]  # (B, 1)
        start = self.start[targets][:, None]
        keys = torch.rand(len(index), self.width, generator=generator, device=self.device)
        pos = torch.arange(self.width, device=self.device)
        keys.masked_fill_(pos >= self.n - count, -1.0)  # beyond this row's negatives
        # u: K distinct positions among this row's negatives; skip the row's own class block.
        u = keys.topk(self.k, dim=1, sorted=False).indices
        negatives = self.order[u + count * (u >= start)]
        if self.mode == "exact":
            positive = index
        else:
            r = torch.rand(len(index), generator=generator, device=self.device)
            offset = torch.minimum((r * count[:, 0]).long(), count[:, 0] - 1)
            positive = self.order[start[:, 0] + offset]
        return torch.cat([positive[:, None], negatives], dim=1)


class ContrastLoader(LoaderWrapper):
    """Wraps a training ``Loader`` (``dataset/loader.py``) and adds ``contrast_index`` to each
    batch; everything else is the wrapped loader's."""

    def __init__(self, loader, k: int, mode: str = "exact"):
        super().__init__(loader)
        self.device = getattr(loader, "device", torch.device("cpu"))
        self.sampler = ContrastSampler(loader.targets_cpu, k, mode, self.device)

    def __iter__(self):
        g = self.epoch_generator(_SALT, self.device)
        for batch in self.loader:
            batch["contrast_index"] = self.sampler.sample(batch["index"], batch["targets"], g)
            yield batch

    def unaugmented(self):
        """The wrapped loader's ``unaugmented()`` (no ``contrast_index``: MGD's matching pass
        needs only the images)."""
        return self.loader.unaugmented()


def add_contrast_index(loader, nce_k: int, mode: str):
    return ContrastLoader(loader, nce_k, mode)

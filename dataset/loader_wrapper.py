"""The base of loaders that wrap a training loader (``dataset/loader.py``) to add entries to
its batches (batch keys, ``dataset/batch_keys.py``): everything but ``__iter__`` is the
wrapped loader's, and each epoch has its own random stream."""
import torch

from .tensor_loader import epoch_seed


class LoaderWrapper:
    """Passes ``set_epoch``, ``len``, ``unaugmented()`` and every other attribute
    (``dataset_size``, ``targets_cpu``, ``mean``, ...) on to ``self.loader``; a subclass
    defines ``__iter__``."""

    def __init__(self, loader):
        self.loader = loader
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.loader.set_epoch(epoch)

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        if name == "loader":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def unaugmented(self):
        """The wrapped loader's ``unaugmented()``, without the added entries."""
        return self.loader.unaugmented()

    def epoch_generator(self, salt: int, device="cpu") -> torch.Generator:
        """A generator for this epoch, seeded from the loader's ``(seed, epoch, rank)`` and
        ``salt``, which keeps each wrapper's stream apart from the loader's and the others'."""
        seed = epoch_seed(getattr(self.loader, "seed", 0), self.epoch)
        seed = (seed * 1000003 + getattr(self.loader, "rank", 0) * 7919 + salt) % 2**63
        return torch.Generator(device=device).manual_seed(seed)

"""The data flags of a run: which data set, where, in which batches."""
from dataclasses import dataclass
from typing import Optional

from helper.core.argtypes import non_negative, positive
from helper.core.option_groups import OptionGroup, option, require

from .folder import FOLDER_DATASET_NAMES

DATASET_NAMES = ['cifar10', 'cifar100', 'mnist', 'fashion_mnist'] + FOLDER_DATASET_NAMES


@dataclass(frozen=True)
class DataOptions(OptionGroup):
    """The data set and its loading. ``batch_size`` is one machine's batch (split over its
    processes: ``RunConfig.batch_per_process``)."""
    title = "data"
    dataset: str = option("cifar100", None, choices=DATASET_NAMES)
    data_folder: str = option("./data", "folder holding the data set (downloaded there when "
                              "missing and online)", "--data-folder")
    batch_size: int = option(64, "the batch of one machine (split over its processes)",
                             "--batch-size", type=positive(int))
    num_workers: int = option(8, "loader workers for folder data sets (in-memory data sets "
                              "need none)", "--num-workers", type=non_negative(int))
    dali: Optional[str] = option(None, "DALI pipelines for folder data sets (imagenet, cub200, "
                                 "folder): decode on cpu or gpu", choices=["cpu", "gpu"])
    jitter: int = option(0, "MNIST only: random translation of up to this many pixels (Hinton "
                         "et al.: 2)")
    eval_drop_last: bool = option(
        False, "in-memory data sets: evaluate on the first floor(N/B)*B test images (B the "
        "run's batch), as a test DataLoader with drop_last=True (hankyul2/KnowledgeDistillation: "
        "9984 of 10000 at batch 128)", "--eval-drop-last")

    def check(self):
        require(self.jitter >= 0, f"--jitter must be 0 or more, got {self.jitter}")
        require(self.data_folder != "", "--data_folder is empty; give a path")
        require(not (self.eval_drop_last and self.folder),
                f"--eval_drop_last applies to the in-memory data sets (cifar10, cifar100, mnist, "
                f"fashion_mnist); {self.dataset} evaluates every image: drop it")

    @property
    def folder(self) -> bool:
        """Whether the data set is read from a folder of images (not held in memory)."""
        return self.dataset in FOLDER_DATASET_NAMES

"""The standard ImageNet transforms and constants, shared by the torchvision path
(``dataset/folder.py``) and the DALI pipelines (``dataset/dali.py``); ``--input_size`` and the
presets of ``dataset/augment.py`` change them."""
from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP = 224
RESIZE = 256


def eval_resize(crop=CROP):
    """The evaluation resize for a crop: 256 for 224, the same ratio for others (73 for 64)."""
    return int(crop * RESIZE / CROP)


def train_transform(crop=CROP, augment=None):
    """``RandomResizedCrop(crop)`` + ``RandomHorizontalFlip()``, then what ``augment`` (an
    ``AugmentConfig``) adds per image, as uint8 CHW."""
    from .augment import mean_fill, sample_transforms
    steps, erasing = ([], None) if augment is None else sample_transforms(
        augment, mean_fill(IMAGENET_MEAN), folder=True)
    return transforms.Compose([transforms.RandomResizedCrop(crop),
                               transforms.RandomHorizontalFlip(), *steps, transforms.PILToTensor(),
                               *([erasing] if erasing is not None else [])])


def eval_transform(crop=CROP):
    """``Resize(256)`` + ``CenterCrop(224)`` (``eval_resize(crop)`` and ``crop``), as uint8 CHW."""
    return transforms.Compose([transforms.Resize(eval_resize(crop)), transforms.CenterCrop(crop),
                               transforms.PILToTensor()])

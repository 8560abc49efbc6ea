"""The standard ImageNet transforms and constants, shared by the torchvision path
(``dataset/folder.py``) and the DALI pipelines (``dataset/dali.py``)."""
from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP = 224
RESIZE = 256


def train_transform():
    """``RandomResizedCrop(224)`` + ``RandomHorizontalFlip()``, as uint8 CHW."""
    return transforms.Compose([transforms.RandomResizedCrop(CROP), transforms.RandomHorizontalFlip(),
                               transforms.PILToTensor()])


def eval_transform():
    """``Resize(256)`` + ``CenterCrop(224)``, as uint8 CHW."""
    return transforms.Compose([transforms.Resize(RESIZE), transforms.CenterCrop(CROP),
                               transforms.PILToTensor()])

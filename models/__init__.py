"""The model zoo: CIFAR models with RepDistiller's names and state-dict keys, MNIST MLPs, and
torchvision's ImageNet models wrapped to the same feature API."""
from .registry import create_deployed, create_model, model_names, register_deployed, register_model  # noqa: F401

# Importing the families registers their constructors.
from . import resnet, resnetv2, wrn, vgg, mobilenetv2, shufflenetv1, shufflenetv2, mlp  # noqa: F401,E402
from . import imagenet  # noqa: F401,E402
from . import resnet_akamaster  # noqa: F401,E402

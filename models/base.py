"""The model contract shared by every architecture (see DESIGN.md, "Model")."""
from contextlib import contextmanager, nullcontext
from typing import List

import torch
import torch.nn as nn

from helper.core.errors import UserError


class FeatureModel(nn.Module):
    """Base class of every model in the zoo.

    ``model(x)`` returns logits. ``model(x, is_feat=True, preact=False)`` returns
    ``(feats, logits)`` where ``feats = [stem, stage_1, ..., stage_n, pooled]``; with
    ``preact=True`` the stage outputs are taken before their last ReLU.

    Subclasses implement ``forward`` and the three accessors below.
    ``input_size`` is the (C, H, W) of one input sample, used for dummy forward passes.
    """

    input_size = (3, 32, 32)

    def get_bn_before_relu(self) -> List[nn.Module]:
        """The BatchNorm before each stage's last ReLU, one per stage (OFD/MGD margins)."""
        raise NotImplementedError(f"{type(self).__name__} has no BN before its stage ReLUs")

    def get_classifier(self) -> nn.Module:
        """The final linear layer mapping the pooled feature to logits (SimKD, SRRL)."""
        raise NotImplementedError

    def get_global_pool(self) -> nn.Module:
        """The module that averages the last map into the classifier's input; its input is
        that map (CAT-KD's class activation maps). By convention the model's ``avgpool``."""
        pool = getattr(self, "avgpool", None)
        if not isinstance(pool, nn.Module):
            raise NotImplementedError(f"{type(self).__name__} has no avgpool module")
        return pool

    def get_feat_modules(self) -> nn.ModuleList:
        """The modules that compute the features, in order (RepDistiller's API)."""
        raise NotImplementedError

    def feature_shapes(self, preact: bool = False):
        """Shapes (without batch) of ``feats`` for one input of ``input_size``."""
        feats, _ = dummy_pass(self, batch=2, is_feat=True, preact=preact)
        return [tuple(f.shape[1:]) for f in feats]


# ---- dummy passes ---------------------------------------------------------------------------
@contextmanager
def evaluating(model: nn.Module, grad: bool = False):
    """``model`` in eval mode, and without a graph unless ``grad``, for the body: a pass that
    probes shapes or sizes (or runs a frozen teacher over data) then changes nothing. Every
    module's own train/eval mode is restored afterwards (also a mix, such as a frozen part kept
    in eval), and in eval mode BatchNorm normalises with its running statistics and leaves them
    (and its batch count) untouched."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with nullcontext() if grad else torch.no_grad():
            yield model
    finally:
        for m, mode in modes:
            m.training = mode


def dummy_input(model: nn.Module, input_size, batch: int = 2, device=None) -> torch.Tensor:
    """Zeros of shape ``(batch, *input_size)`` on ``device`` (default: that of the model's
    first parameter)."""
    if device is None:
        device = next(model.parameters()).device
    return torch.zeros(batch, *input_size, device=device)


def dummy_pass(model: nn.Module, input_size=None, batch: int = 2, **kwargs):
    """``model(zeros, **kwargs)`` on a batch of ``batch`` zeros of ``input_size`` (default: the
    model's own), in eval mode without a graph (``evaluating``); its output."""
    x = dummy_input(model, model.input_size if input_size is None else input_size, batch)
    with evaluating(model):
        return model(x, **kwargs)


def fit_to_data(model: nn.Module, input_size, what: str = "model"):
    """Check with one dummy sample that ``model`` takes inputs of ``input_size`` (C, H, W),
    and make that its ``input_size``, so that methods size their extras for the real data."""
    try:
        dummy_pass(model, input_size, batch=1)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{what} {getattr(model, 'model_name', type(model).__name__)} cannot take "
                        f"this data set's {'x'.join(map(str, input_size))} inputs ({first}); "
                        "choose a model made for this data set") from e
    model.input_size = tuple(input_size)
    return model

"""The model contract shared by every architecture (see DESIGN.md, "Model")."""
from typing import List

import torch
import torch.nn as nn

from helper.errors import UserError


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

    @torch.no_grad()
    def feature_shapes(self, preact: bool = False):
        """Shapes (without batch) of ``feats`` for one input of ``input_size``."""
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            x = torch.zeros(2, *self.input_size, device=device)
            feats, _ = self(x, is_feat=True, preact=preact)
        finally:
            self.train(was_training)
        return [tuple(f.shape[1:]) for f in feats]


def fit_to_data(model: nn.Module, input_size, what: str = "model"):
    """Check with one dummy sample that ``model`` takes inputs of ``input_size`` (C, H, W),
    and make that its ``input_size``, so that methods size their extras for the real data."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=device))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{what} {getattr(model, 'model_name', type(model).__name__)} cannot take "
                        f"this data set's {'x'.join(map(str, input_size))} inputs ({first}); "
                        "choose a model made for this data set") from e
    finally:
        model.train(was_training)
    model.input_size = tuple(input_size)
    return model

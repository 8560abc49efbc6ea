"""The MNIST multilayer perceptrons of Hinton, Vinyals & Dean, "Distilling the Knowledge in a
Neural Network" (2015), section 3.

- ``mlp_1200``: the teacher, 784-1200-1200-10 with ReLU, "strongly regularized using dropout
  and weight-constraints as described in [Hinton et al. 2012]". That reference (and Srivastava
  et al., JMLR 2014) drops 20% of the input pixels and 50% of the hidden units, which is what
  this model does by default (``input_dropout=0.2, dropout=0.5``). The max-norm weight
  constraint and the +-2 pixel input jitter of the paper belong to the optimiser and the data
  pipeline, not to this module.
- ``mlp_800``: the student, 784-800-800-10 with ReLU and no regularization.

There is no reference code, so the module names (``fc1``, ``fc2``, ``fc``) are ours.
``feats = [hidden1, hidden2, pooled]``: the first hidden layer plays the stem, the second the
single stage, and ``pooled`` is exactly what the classifier sees (``hidden2`` after dropout, so
equal to ``hidden2`` in eval mode and ``get_classifier()(feats[-1])`` always gives the logits).
``preact=True`` replaces the stage entry by ``fc2``'s output before its ReLU; the stem stays
post-ReLU, as in every RepDistiller model. There is no BatchNorm, so ``get_bn_before_relu``
raises ``NotImplementedError`` (inherited from ``FeatureModel``).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import FeatureModel
from .registry import register_model


class MLP(FeatureModel):
    """Flatten, two ReLU hidden layers of width ``hidden``, a linear classifier ``fc``."""

    input_size = (1, 28, 28)

    def __init__(self, hidden, num_classes=10, input_dropout=0.0, dropout=0.0):
        super().__init__()
        self.drop_in = nn.Dropout(input_dropout)
        self.fc1 = nn.Linear(math.prod(self.input_size), hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, num_classes)

    def get_feat_modules(self):
        return nn.ModuleList([self.fc1, self.fc2])

    def get_classifier(self):
        return self.fc

    def forward(self, x, is_feat=False, preact=False):
        x = self.drop_in(torch.flatten(x, 1))
        h1 = F.relu(self.fc1(x))
        pre2 = self.fc2(self.drop(h1))
        h2 = F.relu(pre2)
        pooled = self.drop(h2)
        logits = self.fc(pooled)
        if not is_feat:
            return logits
        return [h1, pre2 if preact else h2, pooled], logits


@register_model
def mlp_1200(num_classes=10, input_dropout=0.2, dropout=0.5, **kwargs):
    """Hinton et al. (2015)'s MNIST teacher: 784-1200-1200-10, dropout 0.2 in, 0.5 hidden."""
    return MLP(1200, num_classes, input_dropout=input_dropout, dropout=dropout, **kwargs)


@register_model
def mlp_800(num_classes=10, **kwargs):
    """Hinton et al. (2015)'s unregularized MNIST student: 784-800-800-10."""
    return MLP(800, num_classes, **kwargs)

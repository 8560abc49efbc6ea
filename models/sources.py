"""Models from other sources, named with a prefix wherever a model name is accepted
(``--model``, ``--model_s``, ``--model_t``, a checkpoint's ``model_name``):

- ``timm:<name>`` -- ``timm.create_model(name, num_classes=..., pretrained=False)``;
- ``torchvision:<name>`` -- ``torchvision.models.get_model(name, num_classes=...)``;
- ``path/to/file.py:function`` -- the user's ``function(num_classes=...)`` returning an
  ``nn.Module``.

One adapter per source (never per architecture) gives such a model the feature API of
``models/base.py``. The model keeps its own class, modules and state-dict keys (the adapter is
mixed into its class, as ``models/imagenet.py`` subclasses torchvision's classes), so timm's or
torchvision's weight files load unchanged, and ``isinstance(model, timm_or_torchvision_class)``
holds.

- timm: ``feats`` are the entries of ``model.feature_info`` computed by timm's own
  ``forward_intermediates`` (the last entry of each reduction: stem, then the stages; for an
  isotropic model such as a ViT, the first block, then the last block of each quarter, token
  maps reshaped to (C, H, W) over the patch grid), and the pooled feature is
  ``forward_head(..., pre_logits=True)``; ``get_classifier()`` is timm's own. ViTs are built
  with ``dynamic_img_size=True`` where the model accepts it: the position embedding keeps its
  size (so checkpoints and timm's weights load whatever the data's size) and is resampled to
  the input's patch grid (a 32x32 CIFAR image gives a 2x2 grid with a /16 patch).
- torchvision: the stages are graph nodes picked generically with
  ``torchvision.models.feature_extraction``: at the model's 224x224 size, the last node of each
  spatial resolution that ends a module of depth 1 or 2 (``relu``, ``layer1``, ``features.3``;
  the first resolution is the stem); the pooled feature is the input of the
  classifier, the last ``nn.Linear``. A model with fewer than two resolutions (a ViT's tokens)
  has no feature methods.
- user module: used as it is when it implements the feature API (a ``FeatureModel``, or a
  module with ``feature_shapes`` and ``get_classifier``); otherwise only logits (``model(x)``,
  the logit methods), and the classifier is its last ``nn.Linear``.

For every adapted model ``preact=True`` is refused in one line (its features are not known
before their last ReLU), ``get_bn_before_relu()`` raises NotImplementedError (the methods say
so), and ``get_feat_modules()`` is the backbone: the top-level children that do not hold the
classifier.
"""
import ast
import inspect
import re
from pathlib import Path

import torch
import torch.nn as nn

from helper.core.errors import UserError
from helper.core.user_code import import_file, print_user_traceback, resolved

from .base import FeatureModel, dummy_input, evaluating

PREACT_METHODS = "--distill ab, mgd and reviewkd"

SOURCES = {
    "timm": "timm:NAME            any of timm.list_models(), e.g. timm:resnet10t, "
            "timm:vit_tiny_patch16_224",
    "torchvision": "torchvision:NAME     any of torchvision.models.list_models(), e.g. "
                   "torchvision:resnet18, torchvision:mobilenet_v3_small",
    "file": "FILE.py:FUNCTION     your FUNCTION(num_classes=N) returning an nn.Module, e.g. "
            "./my_net.py:build",
}

_FILE_NAME = re.compile(r"^(?P<path>.+\.py):(?P<function>[A-Za-z_][A-Za-z0-9_]*)$")


def split(name):
    """``(source, target)`` of a prefixed name (source 'timm', 'torchvision' or 'file'; the
    target of a file is ``(path, function)``), or None for a registered name."""
    if not isinstance(name, str):
        return None
    for source in ("timm", "torchvision"):
        if name.startswith(source + ":"):
            return source, name[len(source) + 1:]
    match = _FILE_NAME.match(name)
    if match:
        return "file", (match.group("path"), match.group("function"))
    return None


def name_and_options(target):
    """A timm or torchvision target and the keyword arguments it names after a colon:
    ``vit_tiny_patch16_224:patch_size=4,img_size=32`` -> ``('vit_tiny_patch16_224',
    {'patch_size': 4, 'img_size': 32})``; values are Python literals, else strings."""
    model, _, text = target.partition(":")
    options = {}
    for item in filter(None, text.split(",")):
        key, equals, value = item.partition("=")
        if not equals or not key.isidentifier():
            raise UserError(f"{target!r}: write the model's options as NAME:key=value,key=value "
                            "(e.g. timm:vit_tiny_patch16_224:patch_size=4,img_size=32)")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return model, options


def is_source_name(name) -> bool:
    return split(name) is not None


def is_file_model(name) -> bool:
    """Whether ``name`` is a user's ``FILE.py:FUNCTION`` (building it imports the file)."""
    source = split(name)
    return source is not None and source[0] == "file"


def canonical(name):
    """``name`` with a user's file as its absolute path (``/abs/my_net.py:build``), so that a
    checkpoint records where the model is defined whatever the working directory; other names
    as they are."""
    if not is_file_model(name):
        return name
    path, function = split(name)[1]
    return f"{Path(path).expanduser().resolve()}:{function}"


def _import_timm():
    try:
        import timm
    except ImportError:
        raise UserError("timm: models need the timm package; pip install timm") from None
    return timm


def check(name):
    """A one-line reason why the prefixed ``name`` cannot be built, or None. Does not build it
    (a user's file is not imported here)."""
    source, target = split(name)
    if source in ("timm", "torchvision"):
        try:
            target, _ = name_and_options(target)
        except UserError as e:
            return str(e)
    if source == "timm":
        timm = _import_timm()
        if not target or not timm.is_model(target):
            return (f"timm has no model {target!r}; list them with "
                    "python -c \"import timm; print(timm.list_models())\"")
    elif source == "torchvision":
        import torchvision.models
        if target not in torchvision.models.list_models():
            return (f"torchvision has no model {target!r}; list them with python -c \"import "
                    "torchvision; print(torchvision.models.list_models())\"")
    else:
        path, _ = target
        if not Path(path).expanduser().is_file():
            return f"no such file {path} for model {name}"
    return None


def accepts(name, keyword) -> bool:
    """Whether the source builds ``name`` with ``keyword`` (only 'pretrained' is asked)."""
    source, _ = split(name)
    return keyword == "pretrained" and source in ("timm", "torchvision")


def create(name, num_classes, pretrained=None, **kwargs):
    """Build the prefixed model ``name`` with ``num_classes`` outputs, adapted to the feature
    API. ``pretrained``: None, or the source's weights by name (timm: 'DEFAULT' or a pretrained
    tag; torchvision: a weight enum name such as 'IMAGENET1K_V1' or 'DEFAULT')."""
    reason = check(name)
    if reason:
        raise UserError(reason)
    source, target = split(name)
    if source in ("timm", "torchvision"):
        target, options = name_and_options(target)
        kwargs = {**options, **kwargs}
    build = {"timm": _create_timm, "torchvision": _create_torchvision, "file": _create_file}
    model = build[source](name, target, num_classes, pretrained, **kwargs)
    size = kwargs.get("img_size", kwargs.get("image_size"))  # timm's, torchvision's ViTs
    if size is not None:
        model.input_size = (3, *((size, size) if isinstance(size, int) else tuple(size)))
    return model


# ---- adapting ------------------------------------------------------------------------------
_ADAPTED = {}


def _adapt(model, adapter):
    """Mix ``adapter`` into the class of ``model`` (keeping its modules and state-dict keys)."""
    cls = type(model)
    key = (adapter, cls)
    if key not in _ADAPTED:
        _ADAPTED[key] = type(cls.__name__, (adapter, cls),
                             {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                              "__doc__": cls.__doc__})
    model.__class__ = _ADAPTED[key]
    return model


def _last_linear(model):
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


class _Adapter(FeatureModel):
    """What every source's adapter shares; ``_source`` names the source in messages."""

    _source = "?"

    def _name(self):
        return getattr(self, "model_name", type(self).__name__)

    def _refuse_preact(self):
        raise UserError(f"{self._name()} ({self._source} model) has no features before their "
                        f"last ReLU (preact=True), which {PREACT_METHODS} need; choose a model "
                        "from python -m models for those methods")

    def get_bn_before_relu(self):
        raise NotImplementedError(f"{self._name()} ({self._source} model) has no known BN "
                                  "before its stage ReLUs")

    def get_classifier(self):
        linear = _last_linear(self)
        if linear is None:
            raise NotImplementedError(f"{self._name()} has no nn.Linear classifier")
        return linear

    def get_feat_modules(self):
        try:
            classifier = self.get_classifier()
        except NotImplementedError:
            classifier = None
        return nn.ModuleList([m for m in self.children()
                              if classifier is None
                              or not any(c is classifier for c in m.modules())])

    def _logits(self, x):
        return super(FeatureModel, self).forward(x)


def _no_maps(model, why):
    raise UserError(f"{model._name()} ({model._source} model) {why}, so it has no stage "
                    "feature maps; use a logit method (e.g. --distill kd) or another model")


# ---- timm ----------------------------------------------------------------------------------
def _create_timm(name, target, num_classes, pretrained, **kwargs):
    timm = _import_timm()
    weights = pretrained not in (None, False)
    full = target
    if weights and pretrained is not True and str(pretrained) != "DEFAULT":
        full = f"{target.split('.')[0]}.{pretrained}"  # a pretrained tag, e.g. a1_in1k

    def build(**extra):
        return timm.create_model(full, num_classes=num_classes, pretrained=weights,
                                 **extra, **kwargs)
    try:
        try:  # ViT-like models: position embeddings resampled to the input's patch grid
            model = build(dynamic_img_size=True)
        except TypeError:  # the model has no dynamic_img_size
            model = build()
    except Exception as e:  # weights: no network, unknown tag, hub errors
        if not weights:
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot build {name} with timm's weights {pretrained!r} ({first}); "
                        "offline? put them in the Hugging Face cache, or pass a weight file "
                        "as --pretrained") from e
    model = _adapt(model, TimmModel)
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if size:
        model.input_size = tuple(size)
    return model


class TimmModel(_Adapter):
    """The feature API of a timm model (see the module docstring)."""

    _source = "timm"

    def get_classifier(self):
        classifier = super(FeatureModel, self).get_classifier()
        if not isinstance(classifier, nn.Module) or isinstance(classifier, nn.Identity):
            raise NotImplementedError(f"{self._name()} has no classifier module")
        return classifier

    def _feature_indices(self):
        info = getattr(self, "feature_info", None)
        if not info:
            _no_maps(self, "reports no feature_info")
        reductions = [entry["reduction"] for entry in info]
        if len(set(reductions)) > 1:  # the last entry of each reduction
            return [i for i, r in enumerate(reductions) if i + 1 == len(info) or reductions[i + 1] != r]
        n = len(info)  # isotropic (ViT): the first block and the last of each quarter
        return sorted({0, *[max(0, (n * q) // 4 - 1) for q in (1, 2, 3, 4)]})

    def forward(self, x, is_feat=False, preact=False):
        if not is_feat:
            return self._logits(x)
        if preact:
            self._refuse_preact()
        if not hasattr(self, "forward_intermediates"):
            _no_maps(self, "has no forward_intermediates in this timm version")
        try:
            final, maps = self.forward_intermediates(x, indices=self._feature_indices(),
                                                     output_fmt="NCHW")
        except (NotImplementedError, AssertionError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            _no_maps(self, f"gives no (C, H, W) maps ({first})")
        if any(m.dim() != 4 for m in maps):
            _no_maps(self, "gives token sequences without a patch grid")
        pooled = self.forward_head(final, pre_logits=True)
        logits = self.get_classifier()(pooled)
        return list(maps) + [pooled], logits


# ---- torchvision ---------------------------------------------------------------------------
def _create_torchvision(name, target, num_classes, pretrained, **kwargs):
    import torchvision.models
    weights = None if pretrained in (None, False) else ("DEFAULT" if pretrained is True
                                                        else str(pretrained))
    try:
        model = torchvision.models.get_model(target, weights=weights, num_classes=num_classes,
                                             **kwargs)
    except (KeyError, ValueError) as e:
        raise UserError(f"cannot build {name} with weights {weights!r} ({e}); choose one of "
                        f"DEFAULT or the names of torchvision.models.get_model_weights"
                        f"({target!r})") from e
    except (RuntimeError, OSError) as e:
        raise UserError(f"cannot fetch torchvision's {weights} weights of {name} ({e}); "
                        f"offline? put the file in {torch.hub.get_dir()}/checkpoints") from e
    model = _adapt(model, TorchvisionModel)
    model.input_size = (3, 224, 224)
    return model


class TorchvisionModel(_Adapter):
    """The feature API of a torchvision model (see the module docstring)."""

    _source = "torchvision"
    PROBE_SIZE = (3, 224, 224)

    def _plain(self):
        """A context in which the model is of its own class again (for FX tracing, which
        must not see ``is_feat``)."""
        import contextlib

        @contextlib.contextmanager
        def plain():
            adapted = type(self)
            self.__class__ = next(c for c in adapted.__mro__[1:] if not issubclass(c, FeatureModel))
            try:
                yield
            finally:
                self.__class__ = adapted
        return plain()

    def _trace(self, nodes):
        """A feature extractor returning ``nodes``; it calls the model's own modules (shared,
        not copied)."""
        from torchvision.models.feature_extraction import create_feature_extractor
        with self._plain():
            return create_feature_extractor(self, return_nodes=list(nodes),
                                            suppress_diff_warning=True)

    def _pick_nodes(self):
        from torchvision.models.feature_extraction import get_graph_node_names
        with self._plain():
            _, names = get_graph_node_names(self, suppress_diff_warning=True)
        probe = self._trace(names)
        with evaluating(self):
            out = probe(dummy_input(self, self.PROBE_SIZE, batch=1))
        ends = {}  # the last node of each module at depth 1 or 2 ('layer1', 'features.3')
        for node in names:
            parts = node.split(".")
            for k in (1, 2):
                ends[".".join(parts[:k])] = node
        ends = set(ends.values())
        last, last_end = {}, {}  # resolution -> its last node (ending a module), in order
        for node in names[1:]:  # names[0] is the input
            t = out.get(node)
            if isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[2] * t.shape[3] > 1:
                last[tuple(t.shape[2:])] = node
                if node in ends:
                    last_end[tuple(t.shape[2:])] = node
        last.update(last_end)
        order = sorted(last, key=lambda hw: -hw[0] * hw[1])
        return [last[hw] for hw in order], names[-1]

    def _extractor(self, device):
        """``(extractor, stage nodes, output node)``, kept out of the registered submodules
        (the state dict is the model's own). It calls the model's modules themselves; tensors
        the graph reads directly (``get_attr``) are copies, so it is traced again on another
        device."""
        cached = self.__dict__.get("_feature_extractor")
        if cached is None:
            stages, output = self._pick_nodes()
            if len(stages) < 2:
                _no_maps(self, "has fewer than two spatial resolutions (token sequences?)")
            cached = (None, stages, output, None)
        ext, stages, output, on = cached
        if ext is None or on != device:
            ext = self._trace(stages + [output])
            self.__dict__["_feature_extractor"] = (ext, stages, output, device)
        return ext, stages, output

    def forward(self, x, is_feat=False, preact=False):
        if not is_feat:
            return self._logits(x)
        if preact:
            self._refuse_preact()
        ext, stages, output = self._extractor(x.device)
        if ext.training != self.training:  # its train or eval graph, leaving module modes as set
            modes = [(m, m.training) for m in self.modules()]
            ext.train(self.training)
            for m, mode in modes:
                m.training = mode
        captured = []
        hook = self.get_classifier().register_forward_pre_hook(
            lambda module, args: captured.append(args[0]))
        try:
            out = ext(x)
        finally:
            hook.remove()
        pooled = captured[-1].flatten(1)
        return [out[n] for n in stages] + [pooled], out[output]


# ---- the user's file -----------------------------------------------------------------------
def _create_file(name, target, num_classes, pretrained, **kwargs):
    path, function = target
    path = resolved(path)
    module = import_file(path, f"model {name}", prefix="kd_user_model")
    fn = getattr(module, function, None)
    if not callable(fn):
        raise UserError(f"{path} has no function {function} for model {name}")
    if "num_classes" not in inspect.signature(fn).parameters and not any(
            p.kind == p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()):
        raise UserError(f"{function} in {path} takes no num_classes; define "
                        f"{function}(num_classes) returning an nn.Module")
    try:
        model = fn(num_classes=num_classes, **kwargs)
    except UserError:
        raise
    except Exception as e:
        print_user_traceback(e, path)
        raise UserError(f"{function}(num_classes={num_classes}) in {path} raised "
                        f"{type(e).__name__} building model {name} (its traceback is above); "
                        f"fix {function}") from e
    if not isinstance(model, nn.Module):
        raise UserError(f"{function} in {path} returned a {type(model).__name__}, not an "
                        "nn.Module")
    if pretrained not in (None, False):
        raise UserError(f"{name}: weights by name exist for timm: and torchvision: models only; "
                        "pass a weight file as --pretrained")
    if isinstance(model, FeatureModel) or (hasattr(model, "feature_shapes")
                                           and hasattr(model, "get_classifier")):
        return model
    return _adapt(model, UserModel)


class UserModel(_Adapter):
    """A user's module without the feature API: logits only."""

    _source = "user"

    def forward(self, x, is_feat=False, preact=False):
        if not is_feat:
            return self._logits(x)
        raise UserError(f"{self._name()} is a module without the feature API, so feature "
                        "methods cannot use it; give it forward(x, is_feat=False, preact=False) "
                        "-> (feats, logits) as models/base.py FeatureModel, or use a logit "
                        "method (e.g. --distill kd)")

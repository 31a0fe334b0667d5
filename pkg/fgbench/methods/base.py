"""The Method interface and its registry (shaped like torchvision's ``_api.py``).

A method is an ``nn.Module`` registered by name. It declares the labels it trains on
(``coarse``; ``supervised``: whichever label the setting provides; ``none``), builds its heads on
a backbone, and implements ``training_step`` (and optionally ``on_epoch_start``) and
``embed(images, layer)``. The training loop owns devices, precision, logging and checkpoints.

Under DDP (``fgbench.distributed``) ``training_step`` gets this rank's slice of the global
batch; a loss that couples the samples of a batch computes on ``global_batch(...)``, and an epoch
hook that passes over the training set gets this rank's part of it and gathers what it needs.
"""

import inspect

from torch import nn

from .. import plugins
from ..errors import ConfigError

_REGISTRY = {}


class Method(nn.Module):
    name = None
    labels = "supervised"
    layers = ("backbone", "head")
    default_layer = "head"
    views = 1  # augmented views of each image per batch: 2 for two-crop contrastive methods
    # Under DDP BatchNorm becomes SyncBatchNorm (N processes = one process with the global batch),
    # unless the method keeps per-rank BatchNorm and shuffles the batch across ranks (MoCo).
    shuffle_bn = False
    # State-dict key prefixes only training needs (key encoders, queues, pseudo-labels): kept in
    # checkpoints for an exact resume, left out of model.pt, which only has to embed.
    training_only = ()
    meta = {}  # the method's card: paper, code, deviations

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def training_step(self, batch: dict):
        """Return ``(loss, logs)``: a scalar tensor and a dict of floats for the training log.

        ``batch`` holds ``images``, ``labels`` (the setting's training label), ``index`` (position
        in the training set) and, when ``views == 2``, ``view2``: a second, independently
        augmented view of the same images.
        """
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, batches) -> None:
        """Hook for per-epoch work (SCGM's E-step, LSD's teacher snapshot). ``epoch`` counts from
        0; ``batches()`` iterates once over the whole training set in training batches (same
        dicts as ``training_step`` gets, augmented, on the model's device, random order);
        ``batches(augment=False)`` gives the plain (eval-transform) images in index order. Under
        DDP each rank gets its slice of every batch: gather before deciding anything global, and
        the decision must be the same on every rank."""

    def embed(self, images, layer: str):
        raise NotImplementedError

    def param_groups(self) -> list:
        """Optimizer parameter groups. A group may set ``lr_scale`` (times ``train.lr``, follows
        the schedule), an absolute ``lr`` (kept fixed), ``weight_decay`` or ``momentum``."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def batch_sampler(self, batch_size: int, generator):
        """This epoch's batches (lists of training-set indices), called after
        ``on_epoch_start``; None: the configured sampler (STML builds nearest-neighbour batches)."""
        return None

    def inference_state(self) -> dict:
        """The state dict without the ``training_only`` entries."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(self.training_only)}

    def load_inference_state(self, state: dict) -> None:
        """Load what ``inference_state`` saved: strict, except for the training-only entries."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(self.training_only)]
        if missing or unexpected:
            raise RuntimeError(f"state of '{self.name}' does not match: missing {missing}, unexpected {unexpected}")

    def check_layer(self, layer):
        layer = layer or self.default_layer
        if layer not in self.layers:
            raise ConfigError(f"method '{self.name}' has no layer '{layer}'; valid layers: {', '.join(self.layers)}")
        return layer


def register_method(name: str):
    """Class decorator: make a method buildable by ``name``. Names are unique."""

    def register(cls):
        if name in _REGISTRY:
            raise ValueError(f"method '{name}' is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return register


def _adopt(name: str, cls):
    """A plug-in's method class (entry point group ``fgbench.methods``), named as registered."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{cls!r}, not a subclass of fgbench.methods.Method")
    cls.name = name
    return cls


def _registry() -> dict:
    """The built-in methods and, from the first lookup on, the installed plug-ins' (``fgbench.plugins``)."""
    plugins.extend(plugins.METHODS, _REGISTRY, _adopt)
    return _REGISTRY


def list_methods():
    return sorted(_registry())


def get_method_class(name: str):
    if name not in _registry():
        raise ConfigError(f"unknown method '{name}'; valid methods: {', '.join(list_methods())}")
    return _REGISTRY[name]


def build_method(name: str, backbone: nn.Module, *, num_classes: int, num_samples: int, epochs: int = 1,
                 params: dict) -> Method:
    """Build method ``name``; params set to None keep the constructor's (paper) default.

    Methods that use labels get ``num_classes``; a method whose constructor takes
    ``num_samples`` (per-sample state such as SCGM's subclass labels) gets the training-set size,
    one that takes ``epochs`` (LSD's ramp, ArcFace's warm-up) the number of epochs.
    """
    return instantiate(get_method_class(name), backbone, num_classes=num_classes, num_samples=num_samples,
                       epochs=epochs, params=params)


def instantiate(cls, backbone: nn.Module, *, num_classes: int, num_samples: int, epochs: int = 1,
                params: dict) -> Method:
    """``build_method`` for a class, registered or not (``fgbench.testing`` checks a plug-in's
    class before it is installed)."""
    name = cls.name or cls.__name__
    kwargs = {k: v for k, v in (params or {}).items() if v is not None}
    if cls.labels != "none":
        kwargs["num_classes"] = num_classes
    accepted = inspect.signature(cls.__init__).parameters
    for key, value in (("num_samples", num_samples), ("epochs", epochs)):
        if key in accepted:
            kwargs[key] = value
    try:
        return cls(backbone, **kwargs)
    except TypeError as e:
        raise ConfigError(f"bad parameter for method '{name}' (config key 'methods.{name}.params'): {e}") from e

"""Methods by name. Every family module is imported here, which registers its methods."""

from . import metric_learning, supervised  # noqa: F401  (registration)
from . import contrastive  # noqa: F401  (registration: moco, ancor)
from . import scgm  # noqa: F401  (registration: scgm_g, scgm_a)
from . import lsd  # noqa: F401  (registration: lsd; after metric_learning, whose losses it wraps)
from . import stml  # noqa: F401  (registration: stml)
from . import vmf  # noqa: F401  (registration: vmf, softmax, cosine_softmax, arcface)
from .base import Method, build_method, get_method_class, list_methods, register_method

__all__ = ["Method", "build_method", "get_method_class", "list_methods", "register_method"]

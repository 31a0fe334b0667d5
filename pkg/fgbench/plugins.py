"""Plug-ins: methods, datasets and backbones of other installed packages.

A package declares Python entry points in one of three groups; the entry point's name is the
name it gets in the config, its object what fgbench's own registry holds under that name::

    [project.entry-points."fgbench.methods"]
    cosface = "fgbench_cosface:CosFace"            # a subclass of fgbench.methods.Method
    [project.entry-points."fgbench.datasets"]
    my_birds = "my_package.birds"                  # an object shaped like fgbench.data.fashion_mnist
    [project.entry-points."fgbench.backbones"]
    my_net = "my_package.nets:build"               # a callable(**params) -> nn.Module with out_dim

There is no second registry: the first lookup in a registry (``get_method_class``,
``list_methods``, ``get_dataset``, ``get_backbone``) adds that group's plug-ins to it, once per
process, so config validation and every ``fgbench`` command see the same names. A name taken
by a built-in or by another plug-in, an entry point that cannot be imported, or an object of
the wrong kind stops with one ``PluginError`` naming the entry point and its distribution.
"""

from importlib.metadata import entry_points

from .errors import PluginError

METHODS, DATASETS, BACKBONES = "fgbench.methods", "fgbench.datasets", "fgbench.backbones"
KINDS = {METHODS: "method", DATASETS: "dataset", BACKBONES: "backbone"}

_loaded = {}  # group -> None once loaded, or the PluginError it stopped with (raised again)
_origin = {}  # (group, name) -> "distribution version" of the plug-in that registered it


def describe(entry_point) -> str:
    """``'name = module:attr' (group fgbench.methods, distribution dist 1.0)``."""
    return f"'{entry_point.name} = {entry_point.value}' (group {entry_point.group}, distribution {distribution(entry_point)})"


def distribution(entry_point) -> str:
    dist = entry_point.dist
    return f"{dist.name} {dist.version}" if dist is not None else "unknown"


def extend(group: str, registry: dict, adopt) -> None:
    """Add ``group``'s plug-ins to ``registry`` (once per process). ``adopt(name, obj)`` returns
    what the registry holds for a loaded object, or raises ``TypeError`` saying what the object
    is instead of the expected kind."""
    if group in _loaded:
        if _loaded[group] is not None:
            raise _loaded[group]
        return
    _loaded[group] = None  # a plug-in importing fgbench during its load sees the built-ins
    try:
        for entry_point in _entry_points(group, registry):
            registry[entry_point.name] = _load(entry_point, adopt)
            _origin[(group, entry_point.name)] = distribution(entry_point)
    except PluginError as e:
        _loaded[group] = e
        raise


def _entry_points(group: str, registry: dict) -> list:
    """The group's entry points, refused before anything is imported when a name is taken."""
    found = sorted(entry_points(group=group), key=lambda ep: ep.name)
    kind = KINDS[group]
    for i, entry_point in enumerate(found):
        if entry_point.name in registry:
            owner = _origin.get((group, entry_point.name), "fgbench (a built-in)")
            raise PluginError(f"plug-in {kind} {describe(entry_point)} registers the name '{entry_point.name}', "
                              f"which the {kind} of {owner} already has; rename the entry point or uninstall "
                              f"{entry_point.dist.name if entry_point.dist else 'the plug-in'}")
        if i and found[i - 1].name == entry_point.name:
            raise PluginError(f"plug-in {kind}s {describe(found[i - 1])} and {describe(entry_point)} register the "
                              f"same name '{entry_point.name}'; rename one entry point or uninstall one distribution")
    return found


def _load(entry_point, adopt):
    kind = KINDS[entry_point.group]
    try:
        obj = entry_point.load()
    except Exception as e:  # ImportError, SyntaxError, AttributeError, an error of the module itself
        raise PluginError(f"plug-in {kind} {describe(entry_point)} cannot be loaded: {type(e).__name__}: {e}") from e
    try:
        return adopt(entry_point.name, obj)
    except TypeError as e:
        raise PluginError(f"plug-in {kind} {describe(entry_point)} is {e}") from e


def forget() -> None:
    """Load every group again at its next lookup (tests that install plug-ins on the fly; the
    caller restores the registries)."""
    _loaded.clear()
    _origin.clear()

"""Checks of a config's shape and fit that ``fgbench.config.validate`` runs before any job.

Each check raises ``ConfigError`` with one line: the key to fix, what was expected, what was
found. Torch-free and light (the DAG of every paper config is built in seconds; see
benchmarks/dag.py): the dataset modules are read for their constants only.

- ``from_command_line``: Snakemake's ``--config`` parses nested values as strings
  (``--config 'seeds=[0,1,2]'`` gives ``['0', '1', '2']``); they are read back as YAML scalars,
  as a config file would have given them.
- ``check_shapes``: every section has the shape it must (a mapping, a list, ...), before any
  code indexes into it.
- ``check_param_types``: a method parameter has the type of its constructor argument.
- ``check_protocol_fit``: a protocol asks for no more ways or images than a dataset's test
  split offers, and an intra-class protocol only runs on a dataset with a class hierarchy.
"""

import inspect
import re

from .errors import ConfigError

# The scalars a string from the command line may stand for (YAML's, plus 1e-3, which PyYAML
# leaves a string).
_INT = re.compile(r"^[-+]?[0-9]+$")
_FLOAT = re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$")
_WORDS = {"true": True, "false": False, "null": None, "~": None}


def _scalar(text: str):
    stripped = text.strip()
    if _INT.match(stripped):
        return int(stripped)
    if _FLOAT.match(stripped):
        return float(stripped)
    return _WORDS[stripped.lower()] if stripped.lower() in _WORDS else text


def from_command_line(value):
    """``value`` with every string that is a number, boolean or null read as one (Snakemake
    hands nested ``--config`` values over as strings; a config file would have given these)."""
    if isinstance(value, dict):
        return {key: from_command_line(v) for key, v in value.items()}
    if isinstance(value, list):
        return [from_command_line(v) for v in value]
    return _scalar(value) if isinstance(value, str) else value


def _kind(value) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: f"the text {value!r}", bool: f"{value!r}"}.get(
        type(value), f"{type(value).__name__} {value!r}")


def expect(value, types, key: str, what: str):
    """``value`` is an instance of ``types`` (None passes when ``None`` is in ``types``)."""
    if value is None and None in types:
        return
    types = tuple(t for t in types if t is not None)
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise ConfigError(f"config key '{key}' must be {what}, got {_kind(value)}")


def known_keys(section: dict, valid, key: str):
    unknown = sorted(set(section) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in '{key}'; valid keys: {', '.join(valid)}")


def check_shapes(config: dict, dataset_keys, method_keys, embed_keys) -> None:
    """Every top-level section has its shape, and the per-dataset, per-method and embed sections
    name only keys fgbench knows."""
    mapping = (dict, None)
    expect(config.get("seeds", [0]), (list,), "seeds", "a list of non-negative integers, e.g. [0, 1, 2]")
    for section in ("benchmark", "datasets", "methods", "train", "embed", "protocols", "resources", "report"):
        expect(config.get(section), mapping, section, "a mapping of settings")
    expect(config.get("combinations"), (list, None), "combinations", "a list of combinations")
    for dataset, settings in (config.get("benchmark") or {}).items():
        expect(settings, (dict,), f"benchmark.{dataset}", "a mapping of settings to lists of methods")
        for setting, methods in settings.items():
            key = f"benchmark.{dataset}.{setting}"
            expect(methods, (list,), key, "a list of methods, e.g. [triplet, lsd]")
            if not methods and not config.get("models"):  # a setting of external models alone may list none
                raise ConfigError(f"config key '{key}' lists no method; name at least one or remove the setting")
    for name, section in (config.get("datasets") or {}).items():
        expect(section, mapping, f"datasets.{name}", "a mapping of dataset settings (root, val_fraction, ...)")
        known_keys(section or {}, dataset_keys, f"datasets.{name}")
        expect((section or {}).get("max_images_per_class"), mapping, f"datasets.{name}.max_images_per_class",
               "a mapping {train: n, val: n, test: n}")
    for name, section in (config.get("methods") or {}).items():
        expect(section, mapping, f"methods.{name}", "a mapping with params, train and embed_layer")
        known_keys(section or {}, method_keys, f"methods.{name}")
        expect((section or {}).get("params"), mapping, f"methods.{name}.params", "a mapping of parameters")
        expect((section or {}).get("train"), mapping, f"methods.{name}.train", "a mapping of train settings")
    known_keys(config.get("embed") or {}, embed_keys, "embed")
    for name, proto in (config.get("protocols") or {}).items():
        expect(proto, mapping, f"protocols.{name}", "a mapping of protocol parameters")


# --- method parameters -------------------------------------------------------------------------

_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "dict": dict, "list": list}


def _expected(parameter):
    """(types, description) a constructor argument accepts: from its annotation, else its default."""
    annotation = parameter.annotation
    names = str(annotation) if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if annotation is inspect.Parameter.empty:
        default = parameter.default
        if default is None or default is inspect.Parameter.empty:
            return None
        names = type(default).__name__
    parts = [p.strip() for p in names.replace("typing.", "").split("|")]
    types = [_TYPES[p] for p in parts if p in _TYPES]
    if not types:
        return None
    if float in types:
        types.append(int)  # 1 is a fine learning rate
    if parameter.default is None or "None" in parts:
        types.append(None)
    return tuple(types), " or ".join(p for p in parts if p in _TYPES or p == "None")


def check_param_types(method: str, params: dict, cls) -> None:
    """A parameter of the wrong type (``margin: big``) stops here, not as a TypeError in the loss."""
    signature = inspect.signature(cls.__init__).parameters
    for name, value in (params or {}).items():
        expected = _expected(signature[name]) if name in signature else None
        if expected is not None:
            expect(value, expected[0], f"methods.{method}.params.{name}", f"of type {expected[1]}")


# --- protocols against the datasets' test splits -----------------------------------------------


def _test_classes(module, setting: str):
    """The fine classes of a setting's test split, where the dataset module states them
    (None for datasets whose classes are known only once read, e.g. BREEDS)."""
    classes = module.SETTINGS[setting]["test_classes"]
    if classes is None and hasattr(module, "FINE_NAMES"):
        classes = range(len(module.FINE_NAMES))
    return None if classes is None else list(classes)


def _largest_coarse_class(module, classes) -> int:
    """The most fine classes that one coarse class holds among ``classes``."""
    counts = {}
    for c in classes:
        coarse = int(module.FINE_TO_COARSE[c])
        counts[coarse] = counts.get(coarse, 0) + 1
    return max(counts.values(), default=0)


def check_protocol_fit(cfg: dict, get_dataset) -> None:
    """Every fewshot protocol fits every dataset and setting it runs on: ``n_way`` at most the
    test classes, an intra-class protocol only on a dataset with a hierarchy (a coarse_to_fine
    setting) whose coarse classes hold at least 2 fine ones, and a test cap of at least
    ``n_shot + n_query`` images per class."""
    for dataset, settings in cfg["benchmark"].items():
        module = get_dataset(dataset)
        cap = (cfg["datasets"][dataset].get("max_images_per_class") or {}).get("test")
        for name, proto in cfg["protocols"].items():
            if proto["kind"] != "fewshot":
                continue
            key = f"protocols.{name}"
            needed = proto["n_shot"] + proto["n_query"]
            if cap is not None and cap < needed:
                raise ConfigError(
                    f"config key 'datasets.{dataset}.max_images_per_class.test' = {cap} is below {key}'s "
                    f"n_shot + n_query = {needed}: no class could fill an episode; raise the cap or lower n_query")
            if proto["intra"] and "coarse_to_fine" not in module.SETTINGS:
                raise ConfigError(f"'{key}' is an intra-class protocol, but '{dataset}' has no class hierarchy "
                                  f"(no coarse classes); remove {name} from 'protocols' or the dataset from 'benchmark'")
            for setting in settings:
                classes = _test_classes(module, setting)
                if classes is None:
                    continue  # checked on the embeddings, at evaluation
                where = f"the test split of '{dataset}' ({setting})"
                if not proto["intra"] and proto["n_way"] != "all" and proto["n_way"] > len(classes):
                    raise ConfigError(f"config key '{key}.n_way' = {proto['n_way']} exceeds the {len(classes)} "
                                      f"classes of {where}; lower it or use n_way: all")
                if proto["intra"] and hasattr(module, "FINE_TO_COARSE") and _largest_coarse_class(module, classes) < 2:
                    raise ConfigError(f"'{key}' draws its ways inside one coarse class, but no coarse class of "
                                      f"{where} holds 2 or more fine classes; remove {name} from 'protocols'")

"""External models: networks fgbench does not train, evaluated beside the methods.

A config's ``models`` section names them (docs/configuration.md); each enters at the embed stage
and writes the same ``embeddings/{dataset}/{setting}/{model}/seed{seed}/test.npz`` a trained run
writes (features per layer, labels, index, and the support views made exactly as
``fgbench.embed`` makes them: same view seeds, same ``view_augment``), so evaluation, tables,
comparisons and plots treat a model like a method.

Sources: ``torchvision`` (builder name, ``weights`` or ``weights_file``), ``timm`` (model name,
``checkpoint``), ``callable`` (``package.module:function`` returning an nn.Module or an encode
function), ``released`` (a seed release's checkpoint loaded into fgbench's own method by
``fgbench.models.released.load_released``) and ``embeddings`` (a precomputed file, checked
against the test split).

Seeds: a model is deterministic; it is evaluated under every configured seed, with the same
embeddings (rule embed_model embeds under the first seed, the other seeds copy the file), so
the comparison tables pair it with the methods seed by seed and episode by episode (its interval
then reflects the episodes alone).

This module's checks are light (no torch at import): ``check_models`` runs when Snakemake builds
the DAG.
"""

from __future__ import annotations

import copy
import re
import zipfile
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError, FgbenchError

COMMON_KEYS = ("source", "layers", "transform", "evaluate_on", "metric")
SOURCE_KEYS = {  # required keys first
    "torchvision": ("name", "weights", "weights_file", "params"),
    "timm": ("name", "checkpoint", "params"),
    "callable": ("function", "params"),
    "released": ("release", "method", "checkpoint"),
    "embeddings": ("path",),
}
REQUIRED = {"torchvision": ("name",), "timm": ("name", "checkpoint"), "callable": ("function",),
            "released": ("release", "method", "checkpoint"), "embeddings": ("path",)}
TRANSFORM_KEYS = ("size", "resize", "mean", "std", "channels")
FILE_KEYS = ("weights_file", "checkpoint")
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


# --- config ------------------------------------------------------------------------------------


def _layers(value, key: str):
    if value is None:
        return None
    layers = [value] if isinstance(value, str) else value
    if not isinstance(layers, list) or not layers or not all(isinstance(x, str) and x for x in layers) \
            or len(set(layers)) != len(layers):
        raise ConfigError(f"config key '{key}' must be a layer name or a list of distinct names "
                          f"(e.g. [pooled, layer3]), got {value!r}")
    return layers


def _transform(value, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"config key '{key}' must be a mapping with keys {', '.join(TRANSFORM_KEYS)}")
    unknown = sorted(set(value) - set(TRANSFORM_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in '{key}'; valid keys: {', '.join(TRANSFORM_KEYS)}")
    for name in ("size", "resize"):
        v = value.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"config key '{key}.{name}' must be a positive integer (pixels), got {v!r}")
    for name in ("mean", "std"):
        v = value.get(name)
        if v is not None and (not isinstance(v, list) or len(v) not in (1, 3)
                              or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            raise ConfigError(f"config key '{key}.{name}' must list 1 or 3 numbers (per channel), got {v!r}")
    if (value.get("mean") is None) != (value.get("std") is None):
        raise ConfigError(f"config key '{key}': give both mean and std, or neither")
    if value.get("channels") not in (None, 1, 3):
        raise ConfigError(f"config key '{key}.channels' must be 1 or 3, got {value['channels']!r}")
    return dict(value)


def _evaluate_on(value, benchmark: dict, key: str) -> dict:
    """{dataset: [settings]}: default every dataset and setting of 'benchmark'."""
    cells = {d: list(settings or {}) for d, settings in benchmark.items()}
    if value is None:
        return cells
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"config key '{key}' must map datasets to lists of settings, e.g. "
                          "{fashion_mnist: [coarse_to_fine]}")
    for dataset, settings in value.items():
        if dataset not in cells:
            raise ConfigError(f"config key '{key}' names dataset '{dataset}', which is not in 'benchmark'; "
                              f"valid: {', '.join(cells)}")
        settings = [settings] if isinstance(settings, str) else settings
        bad = [s for s in settings or [] if s not in cells[dataset]]
        if not isinstance(settings, list) or not settings or bad:
            raise ConfigError(f"config key '{key}.{dataset}' must list settings of benchmark.{dataset} "
                              f"({', '.join(cells[dataset])}), got {value[dataset]!r}")
        value[dataset] = settings
    return dict(value)


def _check_source(name: str, entry: dict, key: str) -> None:
    source = entry["source"]
    if source == "torchvision":
        if bool(entry.get("weights")) == bool(entry.get("weights_file")):
            raise ConfigError(f"config key '{key}': give exactly one of 'weights' (a torchvision weights name, e.g. "
                              "IMAGENET1K_V1, downloaded once) or 'weights_file' (a saved state dict)")
        _check_torchvision(entry, key)
    if source == "callable" and not (isinstance(entry["function"], str) and _FUNCTION.match(entry["function"])):
        raise ConfigError(f"config key '{key}.function' must be 'package.module:function', got {entry['function']!r}")
    if source == "released":
        from .methods import get_method_class  # imports torch: only for released models
        from .models.released import RELEASES

        get_method_class(entry["method"])
        if entry["release"] not in RELEASES:
            raise ConfigError(f"config key '{key}.release' is {entry['release']!r}; valid releases: {', '.join(RELEASES)}")
    for field in FILE_KEYS:
        if entry.get(field) is not None and not Path(entry[field]).is_file():
            raise ConfigError(f"config key '{key}.{field}': no such file {entry[field]}")
    if entry.get("params") is not None and not isinstance(entry["params"], dict):
        raise ConfigError(f"config key '{key}.params' must be a mapping of keyword arguments")


def _check_torchvision(entry: dict, key: str) -> None:
    import torchvision

    if entry["name"] not in torchvision.models.list_models():
        raise ConfigError(f"config key '{key}.name': '{entry['name']}' is not a torchvision model builder "
                          "(torchvision.models.list_models() lists them, e.g. resnet18, resnet50, vit_b_16)")
    if entry.get("weights"):
        enum = torchvision.models.get_model_weights(entry["name"])
        if entry["weights"] not in enum.__members__:
            raise ConfigError(f"config key '{key}.weights' is {entry['weights']!r}; valid weights of "
                              f"{entry['name']}: {', '.join(enum.__members__)}")


def check_models(models, benchmark: dict, taken: dict) -> dict:
    """The ``models`` section, each entry checked and completed: ``layers`` (None: the source's
    default), ``transform`` ({}: the source's), ``evaluate_on`` (default: every dataset and setting
    of the benchmark), ``metric``. ``taken``: {name: what it is} of the methods, which a model may not
    be named like (their results share the folder; combinations check their own names)."""
    if models is None:
        return {}
    if not isinstance(models, dict):
        raise ConfigError("config key 'models' must map model names to entries with a 'source'")
    resolved = {}
    for name, entry in models.items():
        key = f"models.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"config key '{key}': a model name is letters, digits and _ . + - (it becomes a folder)")
        if name in taken:
            raise ConfigError(f"config key '{key}': '{name}' is already the name of a {taken[name]}; models, methods "
                              "and combinations share the results folders, so give the model another name")
        if not isinstance(entry, dict) or entry.get("source") not in SOURCE_KEYS:
            got = entry.get("source") if isinstance(entry, dict) else entry
            raise ConfigError(f"config key '{key}.source' is {got!r}; valid sources: {', '.join(SOURCE_KEYS)}")
        source = entry["source"]
        valid = COMMON_KEYS + SOURCE_KEYS[source]
        unknown = sorted(set(entry) - set(valid))
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in '{key}' (source {source}); valid keys: {', '.join(valid)}")
        missing = [k for k in REQUIRED[source] if entry.get(k) in (None, "")]
        if missing:
            raise ConfigError(f"config key '{key}' (source {source}) needs {', '.join(missing)}")
        if source in ("released", "embeddings") and entry.get("transform"):
            raise ConfigError(f"config key '{key}.transform': a {source} model takes the dataset's own transform")
        out = copy.deepcopy(entry)
        out["layers"] = _layers(entry.get("layers"), f"{key}.layers")
        out["transform"] = _transform(entry.get("transform"), f"{key}.transform")
        out["evaluate_on"] = _evaluate_on(copy.deepcopy(entry.get("evaluate_on")), benchmark, f"{key}.evaluate_on")
        if entry.get("metric") not in (None, "cosine", "euclidean"):
            raise ConfigError(f"config key '{key}.metric' is {entry['metric']!r}; valid values: cosine, euclidean")
        out["metric"] = entry.get("metric")
        _check_source(name, out, key)
        if source == "embeddings":
            for dataset, settings in out["evaluate_on"].items():
                for setting in settings:
                    path = embeddings_path(out, dataset, setting)
                    if not Path(path).is_file():
                        raise ConfigError(f"config key '{key}.path': no such file {path} (for {dataset}/{setting}; "
                                          "the path may hold {dataset} and {setting})")
        resolved[name] = out
    return resolved


def embeddings_path(entry: dict, dataset: str, setting: str) -> str:
    return str(entry["path"]).format(dataset=dataset, setting=setting)


def model_layers(entry: dict, methods: dict) -> list | None:
    """The layers a model embeds: its own, else the released method's configured layers, else
    ``pooled``; None for a precomputed file (every layer it holds)."""
    if entry["layers"] is not None:
        return entry["layers"]
    if entry["source"] == "released":
        return methods[entry["method"]]["embed_layer"]
    return None if entry["source"] == "embeddings" else ["pooled"]


# --- the embed stage ---------------------------------------------------------------------------


def embed_model(spec: dict, data_path, out_path, device="auto") -> None:
    """Write a model's test embeddings for one dataset and setting (``spec``:
    ``fgbench.config.model_spec``); nothing is written on bad input."""
    from .data import load_prepared
    from .embed import embedding_arrays, save_embeddings, setting_part
    from .evaluate import non_finite
    from .train.loop import pick_device

    data = load_prepared(data_path)
    part = setting_part(data, spec["setting_def"])
    if spec["source"] == "embeddings":
        arrays = precomputed_arrays(spec["path"], data, part, spec["layers"])
    else:
        device = pick_device(device)
        encoder, layers = _encoder(spec, data_path, device)
        arrays = embedding_arrays(encoder, layers, data, part, "test", spec["embed"], device,
                                  eval_transform=spec["eval_transform"], image_size=spec["image_size"])
        bad = non_finite(arrays)
        if bad:
            layer, count = next(iter(bad.items()))
            raise FgbenchError(f"layer '{layer}' of model '{spec['model']}' gives {count} non-finite values (NaN or "
                               f"inf) on the test split of {spec['dataset']}; check its weights and transform "
                               f"(config key 'models.{spec['model']}')")
    arrays["provenance"] = np.str_(embeddings_provenance(spec, data.data_hash))
    save_embeddings(arrays, out_path)


def embeddings_provenance(spec: dict, data_hash: str) -> str:
    """What a model's embeddings depend on: its spec, the data, the content of every file it
    reads (weights, checkpoint, precomputed embeddings) and fgbench's code."""
    from .provenance import code_version, digest, file_hash

    files = [spec[k] for k in (*FILE_KEYS, "path") if spec.get(k)]
    return digest(spec, data_hash, [file_hash(f) for f in files], code_version())


def embeddings_current(spec: dict, data_path, out_path) -> bool:
    """Whether ``out_path`` already holds these embeddings (the same provenance). A ``callable``
    is the user's code, which the provenance cannot see, so it never counts as current."""
    from .data import prepared_identity

    if spec["source"] == "callable" or not Path(out_path).is_file():
        return False
    try:  # an unreadable old file is simply embedded again
        with np.load(out_path) as z:
            stored = str(z["provenance"]) if "provenance" in z.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False
    with np.load(data_path) as z:
        data_hash = prepared_identity(z, data_path)
    return stored == embeddings_provenance(spec, data_hash)


def _encoder(spec: dict, data_path, device):
    """(encoder, layers) of a torchvision, timm, callable or released model."""
    key = f"models.{spec['model']}"
    if spec["source"] == "released":
        method = released_method(spec, data_path)
        return method.to(device).eval(), spec["layers"]
    from .models.external import build_encoder

    return build_encoder(spec, key, device), spec["layers"]


def released_method(spec: dict, data_path):
    """fgbench's method built as its train spec for this dataset builds it, with a seed release's
    checkpoint loaded by ``fgbench.models.released.load_released`` (its key maps)."""
    from .models import released
    from .train.loop import _splits, build_model, image_shape

    train_spec = spec["train_spec"]
    train_split, _, classes, _, _ = _splits(train_spec, data_path)
    method = build_model(train_spec, len(classes), *image_shape(train_spec, train_split.images), len(train_split))
    released.load_released(method, spec["release"], spec["checkpoint"])
    return method


def precomputed_arrays(path, data, part, layers=None) -> dict:
    """The arrays of a precomputed embeddings file (docs/usage.md), checked against the
    setting's test split and put in its order, with fgbench's labels and class names."""
    from .embed import label_arrays

    try:
        with np.load(path, allow_pickle=False) as z:
            found = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: cannot read the embeddings file ({e}); expected an .npz with 'index' and "
                        "'features_{layer}' arrays") from e
    order = _order(path, found.get("index"), part.index)
    available = [k.removeprefix("features_") for k in found if k.startswith("features_")]
    layers = layers or available
    if not layers:
        raise DataError(f"{path}: no 'features_{{layer}}' array; expected one (N, D) array per layer")
    arrays = {"layers": np.array(layers), **label_arrays(data, part)}
    views = set()
    for layer in layers:
        plain = _features(path, found, f"features_{layer}", 2, len(order))
        arrays[f"features_{layer}"] = plain[order]
        if f"aug_features_{layer}" in found:
            aug = _features(path, found, f"aug_features_{layer}", 3, len(order), dim=plain.shape[1])
            arrays[f"aug_features_{layer}"] = aug[order]
            views.add(aug.shape[1])
    if len(views) > 1:
        raise DataError(f"{path}: the aug_features arrays hold different numbers of views ({sorted(views)}); "
                        "expected the same number for every layer")
    return arrays


def _order(path, index, split_index) -> np.ndarray:
    """Positions in the file of the split's images, in split order; the file's ``index`` must
    hold each test image of the setting exactly once."""
    n = len(split_index)
    if index is None:
        raise DataError(f"{path}: no 'index' array; expected the {n} test images' indices into the official test split")
    index = np.asarray(index)
    if index.ndim != 1 or index.dtype.kind not in "iu":
        raise DataError(f"{path}: 'index' has dtype {index.dtype} and shape {index.shape}; expected {n} integers")
    values, counts = np.unique(index, return_counts=True)
    extra = np.setdiff1d(values, split_index)
    missing = np.setdiff1d(split_index, values)
    if len(index) != n or (counts > 1).any() or len(extra) or len(missing):
        raise DataError(f"{path}: 'index' does not cover the test split exactly: {len(index)} entries for {n} images, "
                        f"{int((counts > 1).sum())} repeated, {len(missing)} of the split's images missing "
                        f"(e.g. {missing[:5].tolist()}), {len(extra)} not in the split (e.g. {extra[:5].tolist()}); "
                        "expected each image of the setting's test split once (fgbench.external.evaluation_split)")
    where = {int(v): i for i, v in enumerate(index)}
    return np.array([where[int(i)] for i in split_index], dtype=np.int64)


def _features(path, found, key: str, ndim: int, n: int, dim=None) -> np.ndarray:
    if key not in found:
        raise DataError(f"{path}: no '{key}' array; the file's arrays: {', '.join(found)}")
    values = found[key]
    shape = "(N, D)" if ndim == 2 else "(N, views, D)"
    if values.ndim != ndim or values.shape[0] != n or values.dtype.kind != "f" or (dim is not None and values.shape[-1] != dim):
        raise DataError(f"{path}: '{key}' has shape {values.shape} and dtype {values.dtype}; expected floats of "
                        f"shape {shape} with N = {n}" + (f" and D = {dim} (as its features_ array)" if dim else ""))
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise DataError(f"{path}: '{key}' holds {bad} non-finite values (NaN or inf); expected finite features")
    return values


def evaluation_split(data_path, dataset: str, setting: str):
    """(images, index) of the test images a model is evaluated on in ``setting``: what a
    precomputed embeddings file must cover (``index``: each image's position in the official
    test split)."""
    from .data import get_dataset, load_prepared
    from .embed import setting_part

    part = setting_part(load_prepared(data_path), get_dataset(dataset).SETTINGS[setting])
    return part.images, part.index


# --- one model, one command (fgbench evaluate-model) ---------------------------------------------

#: The sections of an experiment config that decide the episodes and queries (``--configfile``).
SHARED_SECTIONS = ("datasets", "embed", "protocols", "train", "methods")


def one_model_config(name: str, entry: dict, dataset: str, settings, protocols, base: dict | None = None) -> dict:
    """A config evaluating one model (no methods) on ``dataset``'s ``settings`` with ``protocols``;
    ``base`` (an experiment config) gives the dataset, embed and protocol sections, so its
    episodes are the benchmark's. Validated (``fgbench.config.validate``)."""
    from .config import validate
    from .data import get_dataset

    base = base or {}
    settings = list(settings or get_dataset(dataset).SETTINGS)
    protocols_base = base.get("protocols") or {}
    config = {key: copy.deepcopy(base[key]) for key in SHARED_SECTIONS if key in base}
    config["datasets"] = {dataset: (config.get("datasets") or {}).get(dataset) or {}}
    config.update(benchmark={dataset: {s: [] for s in settings}}, seeds=[0],
                  protocols={p: protocols_base.get(p) or {} for p in protocols},
                  models={name: {**entry, "evaluate_on": {dataset: settings}}})
    return validate(config)


def evaluate_model(cfg: dict, name: str, workdir, device="cpu", embed_device="auto") -> list:
    """Prepare the dataset (once per prepare spec), embed the model and evaluate it on every
    protocol of ``cfg`` (``one_model_config``), under ``workdir`` in the workflow's layout;
    returns the metrics files written."""
    from .config import model_runs, model_spec, prepare_spec, protocol_spec, protocols_for, spec_hash
    from .data import prepare
    from .evaluate import evaluate_to_file

    workdir, written = Path(workdir), []
    for dataset, setting, model, seed in model_runs(cfg):
        spec = prepare_spec(cfg, dataset)
        data = workdir / "data" / f"{dataset}-{spec_hash(spec)}" / "data.npz"
        if not data.is_file():
            print(f"preparing {dataset} into {data.parent}", flush=True)
            prepare(dataset, spec, data)
        run_dir = f"{dataset}/{setting}/{model}/seed{seed}"
        embeddings = workdir / "embeddings" / run_dir / "test.npz"
        mspec = model_spec(cfg, dataset, setting, model)
        if embeddings_current(mspec, data, embeddings):  # a second call, e.g. for other protocols
            print(f"reusing {embeddings} (same model files, data and code)", flush=True)
        else:
            if mspec["source"] != "embeddings":  # the long part: the user waits on this line
                print(f"embedding the {setting} test split of {dataset} with {model} "
                      f"({mspec['embed']['views']} support views per image)", flush=True)
            embed_model(mspec, data, embeddings, device=embed_device)
        run = {"dataset": dataset, "setting": setting, "method": model, "seed": seed}
        for protocol in protocols_for(cfg, setting, model):
            out = workdir / "metrics" / run_dir / f"{protocol}.json"
            evaluate_to_file(embeddings, protocol_spec(cfg, protocol, model), run, spec_hash(mspec), out, device)
            written.append(out)
    return written

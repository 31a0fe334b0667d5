"""Typed views of the resolved config: defaults, validation, and one spec per job.

The one place for defaults. ``validate`` fills them in and checks names and ranges, raising
``ConfigError`` with the key to fix; the ``*_spec`` functions cut from the resolved config
exactly what one job needs, so a Snakemake job reruns only when its own inputs change.
"""

import copy
import hashlib
import inspect
import json

from .config_checks import check_param_types, check_protocol_fit, check_shapes, from_command_line  # noqa: F401 (from_command_line: common.smk)
from .errors import ConfigError
from .evaluate.combine import combination_layer, validate_combinations
from .report.options import validate_compare, validate_report
from .evaluate.protocols import CLASSIFIERS, PROTOCOLS

TRAIN_DEFAULTS = {
    "epochs": 10,
    "batch_size": 128,
    "optimizer": "adam",  # adam | adamw | adamp (STML) | sgd; adamw and adamp decay decoupled from the gradient
    "lr": 1e-3,
    "weight_decay": 0.0,
    "momentum": 0.9,  # sgd only
    "nesterov": False,  # sgd and adamp
    "sampler": "random",  # random | class_random (RevDML: classes x samples_per_class)
    "samples_per_class": 2,
    # class_random: true draws classes and images with replacement (RevDML); false draws distinct
    # classes and distinct images per batch (vMF's EpisodicBatchSampler)
    "replacement": True,
    "drop_last": True,  # random sampler: drop the last partial batch (SCGM keeps it: false)
    "augment": None,  # a name in fgbench.data.transforms.AUGMENTS; None: the dataset's default
    "label_noise": 0.0,  # symmetric noise on the training labels (LSD's noisy-label runs), seeded by the run's seed
    "schedule": "constant",  # constant | cosine (restarted `cycles` times: ANCOR/SCGM use 10)
    "cycles": 1,
    "precision": "fp32",  # fp32 (every release) | bf16 (autocast, no gradient scaler) | fp16 (autocast and scaler; CUDA only)
    # BatchNorm statistics over groups of this many images of a batch, as on one GPU of the
    # releases (MoCo/ANCOR/SCGM: 64 per GPU); None: over the whole batch (of each process)
    "bn_group_size": None,
    "num_workers": 0,
    "device": "auto",  # auto (CUDA when present) | cpu | cuda
    # workers ship uint8 crops; colour jitter, grayscale and blur run on the batch on the training
    # device (false: the whole augmentation per image in the workers, as the releases)
    "batch_augment": False,
    "channels_last": False,  # channels-last memory format for convolutional backbones (faster on GPUs)
    "compile": False,  # torch.compile the backbone
}
DATASET_DEFAULTS = {
    "root": None,
    "download_dir": None,
    "hierarchy_dir": None,  # BREEDS: folder with the hierarchy files; None: downloaded into <download_dir>/breeds
    "breeds_split": None,  # BREEDS: None (SCGM/ANCOR: all subclasses) | rand | good | bad (source/target)
    "val_root": None,  # BREEDS: ImageNet val sorted into wnid folders; None: <root>/val
    "val_fraction": 0.1,
    # Held-out training classes for model selection (vMF's open-set protocol); None: the dataset's
    # default (cub200 15, cars196 15, sop 1698, else none); 0: none, val_fraction of the images instead.
    "val_classes": None,
    "split_seed": 0,
    "verify": True,  # md5 of the official files (Fashion-MNIST, MNIST, CIFAR); false: a modified copy
    "max_images_per_class": None,  # {train: n, val: n, test: n}: caps for quick runs and tests
    # Datasets read as image files (BREEDS, CUB, Cars, SOP): files (decode the JPEGs in every
    # epoch, as the releases) | resized (decoded once by prepare into a memory-mapped store,
    # shorter side store_size; fgbench.data.store, docs/deviations.md)
    "store": "files",
    "store_size": None,  # the store's shorter side; None: the eval resize (256 for 224 crops)
    "backbone": {"name": "small_cnn"},
    "view_augment": None,  # few-shot support views; None: the dataset's default
    "eval_transform": None,  # plain features (e.g. BREEDS resize 256, centre crop 224); None: the dataset's
    "train": {},
    "resources": {},  # per rule, as the top-level 'resources': this dataset's jobs only (e.g. SOP's memory)
}
# embed_layer: a layer name or a list of them (the first selects the model on validation);
# None: the method's default layer.
# metric: the retrieval distance of the method's embeddings (validation and the retrieval
# protocol): cosine, or euclidean on the raw embedding (STML's f, the unnormalised softmax);
# None: the retrieval protocol's metric (cosine).
METHOD_DEFAULTS = {"params": {}, "train": {}, "embed_layer": None, "metric": None}
OPTIMIZERS = ("adam", "adamw", "adamp", "sgd")
PRECISIONS = ("fp32", "bf16", "fp16")
RETRIEVAL_METRICS = ("cosine", "euclidean")
EMBED_DEFAULTS = {"views": 5, "batch_size": 1024, "view_seed": 0}
# Scheduling resources per rule (top-level 'resources', and per dataset): Snakemake's portable
# names, which the SLURM executor maps to sbatch options (--gpus, --mem, -t, --cpus-per-task).
# Cluster-specific ones (partition, account) belong in a profile, not here.
# The local rules (aggregate, tables, plot, curves: small files, on the machine running Snakemake)
# take none.
RESOURCE_RULES = ("prepare", "rearrange_imagenet_val", "train", "embed", "evaluate", "combine", "tsne")
RESOURCE_KEYS = {"gpu": 0, "mem_mb": 1, "runtime": 1, "cpus_per_task": 1, "threads": 1}  # name -> minimum
TOP_LEVEL = {"seeds", "benchmark", "datasets", "methods", "train", "embed", "protocols", "resources",
             "report", "combinations", "imagenet_val", "compare", "models"}


def _merge(base: dict, override: dict) -> dict:
    """Deep merge; keys of ``override`` win. Values of None in override keep the base (timm)."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif value is not None or key not in out:
            out[key] = copy.deepcopy(value)
    return out


def merge_dataset_overrides(experiments: dict, overrides: dict | None) -> dict:
    """{name: experiment config} with ``overrides[dataset]`` (your paths, say) merged into the
    'datasets' section of every experiment whose benchmark uses that dataset."""
    merged = copy.deepcopy(experiments)
    for dataset, override in (overrides or {}).items():
        users = [cfg for cfg in merged.values() if dataset in (cfg.get("benchmark") or {})]
        if not users:
            raise ConfigError(f"config key 'datasets.{dataset}' matches no dataset of the chosen experiments")
        for cfg in users:
            cfg.setdefault("datasets", {})[dataset] = _merge(cfg["datasets"].get(dataset) or {}, override)
    return merged


def _positive_int(value, key):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"config key '{key}' must be a positive integer, got {value!r}")


def _one_of(value, choices, key):
    if value not in choices:
        raise ConfigError(f"config key '{key}' is {value!r}; valid values: {', '.join(map(str, choices))}")


def _check_train(train: dict, key: str):
    unknown = set(train) - set(TRAIN_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in '{key}'; valid keys: {', '.join(TRAIN_DEFAULTS)}")
    for name in ("epochs", "batch_size", "samples_per_class", "cycles"):
        _positive_int(train[name], f"{key}.{name}")
    if train["bn_group_size"] is not None:
        _positive_int(train["bn_group_size"], f"{key}.bn_group_size")
    if not isinstance(train["label_noise"], (int, float)) or not 0 <= train["label_noise"] < 1:
        raise ConfigError(f"config key '{key}.label_noise' must be in [0, 1), got {train['label_noise']!r}")
    if not isinstance(train["lr"], (int, float)) or train["lr"] <= 0:
        raise ConfigError(f"config key '{key}.lr' must be a positive number, got {train['lr']!r}")
    _one_of(train["optimizer"], OPTIMIZERS, f"{key}.optimizer")
    for flag in ("nesterov", "replacement", "drop_last", "batch_augment", "channels_last", "compile"):
        _one_of(train[flag], (False, True), f"{key}.{flag}")
    _one_of(train["sampler"], ("random", "class_random"), f"{key}.sampler")
    _one_of(train["precision"], PRECISIONS, f"{key}.precision")
    if train["augment"] is not None:
        _one_of(train["augment"], _augment_names(), f"{key}.augment")
    _one_of(train["schedule"], ("constant", "cosine"), f"{key}.schedule")
    _one_of(train["device"], ("auto", "cpu", "cuda"), f"{key}.device")


def _check_resources(resources, key: str) -> dict:
    """{rule: {resource: int}}: known rules and resource names, whole numbers (runtime in minutes,
    mem_mb in MB) at or above their minimum."""
    for rule, values in (resources or {}).items():
        if rule not in RESOURCE_RULES:
            raise ConfigError(f"unknown rule '{rule}' in '{key}'; valid rules: {', '.join(RESOURCE_RULES)}")
        for name, value in (values or {}).items():
            if name not in RESOURCE_KEYS:
                raise ConfigError(f"unknown resource '{name}' in '{key}.{rule}'; valid: {', '.join(RESOURCE_KEYS)}")
            if isinstance(value, bool) or not isinstance(value, int) or value < RESOURCE_KEYS[name]:
                unit = {"runtime": " (minutes)", "mem_mb": " (MB)"}.get(name, "")
                raise ConfigError(f"config key '{key}.{rule}.{name}' must be a whole number >= "
                                  f"{RESOURCE_KEYS[name]}{unit}, got {value!r}")
    return resources or {}


def _check_protocol(name: str, proto: dict, views: int):
    key = f"protocols.{name}"
    unknown = set(proto) - set(PROTOCOLS[name])
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in '{key}'; valid keys: {', '.join(PROTOCOLS[name])}")
    if proto["kind"] != PROTOCOLS[name]["kind"]:
        raise ConfigError(f"'{key}.kind' cannot be changed (it is {PROTOCOLS[name]['kind']})")
    if proto["kind"] == "fewshot":
        if proto["n_way"] != "all":
            _positive_int(proto["n_way"], f"{key}.n_way")
            if proto["n_way"] < 2:
                raise ConfigError(f"config key '{key}.n_way' must be at least 2 or 'all', got {proto['n_way']}")
        for field in ("n_shot", "n_query", "n_aug", "episodes"):
            _positive_int(proto[field], f"{key}.{field}")
        if proto["n_aug"] > views:
            raise ConfigError(f"'{key}.n_aug' = {proto['n_aug']} exceeds embed.views = {views}; raise embed.views")
        _one_of(proto["classifier"], CLASSIFIERS, f"{key}.classifier")
    elif proto["kind"] == "closed_set":
        _positive_int(proto["ece_bins"], f"{key}.ece_bins")
    else:
        for k in proto["recall_k"]:
            _positive_int(k, f"{key}.recall_k")
        _one_of(proto["metric"], RETRIEVAL_METRICS, f"{key}.metric")


def _check_benchmark(cfg: dict):
    from .data import get_dataset
    from .methods import get_method_class  # imports torch: only when validating

    if not cfg["benchmark"]:
        raise ConfigError("config key 'benchmark' is empty: name at least one dataset, setting and method")
    for dataset, settings in cfg["benchmark"].items():
        module = get_dataset(dataset)
        for setting, methods in (settings or {}).items():
            if setting not in module.SETTINGS:
                raise ConfigError(
                    f"unknown setting '{setting}' for dataset '{dataset}' in 'benchmark'; "
                    f"valid settings: {', '.join(module.SETTINGS)}"
                )
            train_label = module.SETTINGS[setting]["train_label"]
            for method in methods or []:
                labels = get_method_class(method).labels
                if labels == "coarse" and train_label != "coarse":
                    raise ConfigError(
                        f"method '{method}' trains on coarse labels, but setting '{setting}' of "
                        f"'{dataset}' provides {train_label} labels; move it under a coarse_to_fine setting"
                    )


def _resolve_methods(cfg: dict, methods: dict) -> dict:
    """Defaults filled into every method in the matrix or in 'methods'; merged train sections checked."""
    from .methods import get_method_class  # imports torch: only when validating

    for name in methods:
        get_method_class(name)  # a typo in 'methods' gets the list of valid names too
    used = {m for settings in cfg["benchmark"].values() for ms in settings.values() for m in ms or []}
    resolved = {name: _merge(METHOD_DEFAULTS, methods.get(name)) for name in sorted(used | set(methods))}
    for name, m in resolved.items():
        cls = get_method_class(name)
        m["embed_layer"] = _layers(name, m["embed_layer"], cls)
        if m["metric"] is not None:
            _one_of(m["metric"], RETRIEVAL_METRICS, f"methods.{name}.metric")
        _check_params(name, m["params"], cls)
        check_param_types(name, m["params"], cls)
    for dataset, ds in cfg["datasets"].items():  # every merged train section, before any job runs
        _check_train(_merge(cfg["train"], ds["train"]), f"datasets.{dataset}.train")
        for name, m in resolved.items():
            _check_train(_merge(_merge(cfg["train"], ds["train"]), m["train"]), f"methods.{name}.train")
    return resolved


def _check_params(method: str, params: dict, cls) -> None:
    """A misspelt method parameter stops the workflow before any job, naming the valid ones."""
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "backbone")]
    unknown = sorted(set(params or {}) - set(accepted))
    if unknown:
        valid = [p for p in accepted if p not in ("num_classes", "num_samples", "epochs")]
        raise ConfigError(f"unknown parameter(s) {unknown} in 'methods.{method}.params'; valid: {', '.join(valid)}")


def _layers(method: str, layer, cls) -> list:
    """``embed_layer`` as a non-empty list of the method's layers (None: its default layer)."""
    layers = [cls.default_layer] if layer is None else [layer] if isinstance(layer, str) else list(layer)
    for name in layers:
        if name not in cls.layers:
            raise ConfigError(f"config key 'methods.{method}.embed_layer' names '{name}'; "
                              f"valid layers of '{method}': {', '.join(cls.layers)}")
    if not layers or len(set(layers)) != len(layers):
        raise ConfigError(f"config key 'methods.{method}.embed_layer' must list distinct layers, got {layer!r}")
    return layers


def _resolve_datasets(cfg: dict) -> dict:
    """Each dataset's section with defaults; transforms left at None take the dataset's own."""
    from .data import get_dataset, split_defaults

    datasets = cfg.get("datasets") or {}
    resolved = {}
    for name in cfg["benchmark"]:
        ds = _merge(_merge(DATASET_DEFAULTS, split_defaults(name)), datasets.get(name))
        if not 0 < ds["val_fraction"] < 1:
            raise ConfigError(f"config key 'datasets.{name}.val_fraction' must be in (0, 1), got {ds['val_fraction']}")
        transforms = get_dataset(name).TRANSFORMS
        for key, default in (("view_augment", transforms["view"]), ("eval_transform", transforms["eval"])):
            ds[key] = default if ds[key] is None else ds[key]
            _one_of(ds[key], _augment_names(), f"datasets.{name}.{key}")
        _one_of(ds["verify"], (True, False), f"datasets.{name}.verify")
        _check_backbone(ds["backbone"], f"datasets.{name}.backbone")
        _check_store(name, ds)
        _check_resources(ds["resources"], f"datasets.{name}.resources")
        resolved[name] = ds
    return resolved


def _check_backbone(backbone, key: str) -> None:
    """A built-in or plug-in backbone (``fgbench.plugins``), named before any job runs."""
    from .models import check_backbone  # imports torch: only when validating

    if not isinstance(backbone, dict) or not isinstance(backbone.get("name"), str):
        raise ConfigError(f"config key '{key}' must be a mapping with a name, e.g. {{name: small_cnn}}, got {backbone!r}")
    check_backbone(backbone["name"], f"{key}.name")


def _check_store(name: str, ds: dict):
    from .data import get_dataset
    from .data.store import KINDS

    _one_of(ds["store"], KINDS, f"datasets.{name}.store")
    module = get_dataset(name)
    if ds["store"] == "resized" and not getattr(module, "READS_FILES", False):
        raise ConfigError(f"config key 'datasets.{name}.store' is 'resized', but {name} is not read as image files "
                          "(only BREEDS, cub200, cars196 and sop are; the others are arrays already); use 'files'")
    size = ds["store_size"]
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < module.IMAGE_SIZE):
        raise ConfigError(f"config key 'datasets.{name}.store_size' must be null or an integer of at least the "
                          f"crop size {module.IMAGE_SIZE}, got {size!r}")


def _augment_names():
    from .data.transforms import AUGMENTS

    return tuple(AUGMENTS)


def _resolve_protocols(protocols: dict, views: int) -> dict:
    if not protocols:
        raise ConfigError(f"config key 'protocols' is empty; valid protocols: {', '.join(PROTOCOLS)}")
    for name in protocols:
        if name not in PROTOCOLS:
            raise ConfigError(f"unknown protocol '{name}' in 'protocols'; valid protocols: {', '.join(PROTOCOLS)}")
    resolved = {name: _merge(PROTOCOLS[name], protocols[name]) for name in protocols}
    for name, proto in resolved.items():
        _check_protocol(name, proto, views)
    return resolved


def validate(config: dict) -> dict:
    """Return the config with every default filled in; raise ConfigError on bad input."""
    unknown = set(config) - TOP_LEVEL
    if unknown:
        raise ConfigError(f"unknown top-level config key(s) {sorted(unknown)}; valid keys: {', '.join(sorted(TOP_LEVEL))}")
    cfg = from_command_line(copy.deepcopy(config))  # nested --config values arrive as strings
    check_shapes(cfg, DATASET_DEFAULTS, METHOD_DEFAULTS, EMBED_DEFAULTS)
    cfg.setdefault("seeds", [0])
    cfg.setdefault("benchmark", {})
    for seed in cfg["seeds"]:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"config key 'seeds' must list non-negative integers, got {seed!r}")
    cfg["train"] = _merge(TRAIN_DEFAULTS, cfg.get("train"))
    _check_train(cfg["train"], "train")
    cfg["embed"] = _merge(EMBED_DEFAULTS, cfg.get("embed"))
    for field in ("views", "batch_size"):
        _positive_int(cfg["embed"][field], f"embed.{field}")
    _check_benchmark(cfg)
    cfg["datasets"] = _resolve_datasets(cfg)
    cfg["resources"] = _check_resources(cfg.get("resources"), "resources")
    cfg["report"] = validate_report(cfg.get("report"))
    cfg["methods"] = _resolve_methods(cfg, {**released_methods(cfg.get("models")), **(cfg.get("methods") or {})})
    cfg["protocols"] = _resolve_protocols(cfg.get("protocols"), cfg["embed"]["views"])
    from .data import get_dataset

    check_protocol_fit(cfg, get_dataset)
    cfg["models"] = _resolve_models(cfg)
    # A combination may join methods and models; a precomputed file's layers are known only when
    # it is read (None: any layer).
    layers = {name: tuple(m["embed_layer"]) for name, m in cfg["methods"].items()}
    layers.update({name: tuple(m["layers"]) if m["layers"] else None for name, m in cfg["models"].items()})
    cfg["combinations"] = validate_combinations(cfg.get("combinations"), layers, runs=runs(cfg) + model_runs(cfg))
    known = _method_names() | {c["name"] for c in cfg["combinations"]} | set(cfg["models"])
    cfg["compare"] = validate_compare(cfg.get("compare"), known)
    return cfg


def released_methods(models) -> dict:
    """{method: {}} of the released models' methods: resolved like the methods of 'methods', so a
    released checkpoint is built as its train spec builds the method."""
    entries = models.values() if isinstance(models, dict) else []
    return {e["method"]: {} for e in entries if isinstance(e, dict) and e.get("source") == "released" and e.get("method")}


def _resolve_models(cfg: dict) -> dict:
    """The 'models' section (fgbench.external): checked, with each model's layers resolved."""
    from .external import check_models, model_layers

    models = check_models(cfg.get("models"), cfg["benchmark"], {m: "method" for m in _method_names()})
    for name, entry in models.items():
        if entry["source"] == "released" and entry["layers"] is not None:
            valid = cfg["methods"][entry["method"]]["embed_layer"]
            from .methods import get_method_class

            bad = [x for x in entry["layers"] if x not in get_method_class(entry["method"]).layers]
            if bad:
                raise ConfigError(f"config key 'models.{name}.layers' names {bad}; valid layers of "
                                  f"'{entry['method']}': {', '.join(get_method_class(entry['method']).layers)} "
                                  f"(default: {', '.join(valid)})")
        entry["layers"] = model_layers(entry, cfg["methods"])
    return models


def _method_names() -> set:
    from .methods import list_methods  # imports torch: only when validating

    return set(list_methods())


# --- one spec per job ------------------------------------------------------------------------


def runs(cfg: dict):
    """Every (dataset, setting, method, seed) cell of the benchmark matrix."""
    return [
        (dataset, setting, method, seed)
        for dataset, settings in cfg["benchmark"].items()
        for setting, methods in settings.items()
        for method in methods or []
        for seed in cfg["seeds"]
    ]


def model_runs(cfg: dict):
    """Every (dataset, setting, model, seed) cell of the external models (config 'models'): each
    model under every configured seed, so comparisons pair it with the methods seed by seed."""
    return [
        (dataset, setting, name, seed)
        for name, entry in cfg.get("models", {}).items()
        for dataset, settings in entry["evaluate_on"].items()
        for setting in settings
        for seed in cfg["seeds"]
    ]


def embedded_layers(cfg: dict, name: str) -> list:
    """The layers a method or model embeds ([] for a precomputed file: every layer it holds)."""
    if name in cfg["methods"]:
        return cfg["methods"][name]["embed_layer"]
    return cfg["models"][name]["layers"] or []


def protocols_for(cfg: dict, setting: str, method: str) -> list:
    """The protocols a run is evaluated with: every configured one, except that closed-set
    accuracy needs a closed_set setting and a method (or model) that embeds class probabilities."""
    return [
        name for name, proto in cfg["protocols"].items()
        if proto["kind"] != "closed_set" or (setting == "closed_set" and "probs" in embedded_layers(cfg, method))
    ]


def job_resources(cfg: dict, rule: str, dataset: str | None = None) -> dict:
    """The resources of a job of ``rule``: the rule's (top-level 'resources'), overridden by its
    dataset's ('datasets.<name>.resources')."""
    own = dict(cfg["resources"].get(rule) or {})
    if dataset is not None:
        own.update(cfg["datasets"][dataset]["resources"].get(rule) or {})
    return own


def prepare_spec(cfg: dict, dataset: str) -> dict:
    ds = cfg["datasets"][dataset]
    keys = ("root", "download_dir", "val_fraction", "val_classes", "split_seed", "max_images_per_class",
            "hierarchy_dir", "breeds_split", "val_root", "verify")
    if ds["store"] != "files":  # a store changes the pixels; the file path leaves the spec (and data hashes) as before
        keys += ("store", "store_size")
    return {"dataset": dataset, **{k: ds[k] for k in keys}}


def train_spec(cfg: dict, dataset: str, setting: str, method: str, seed: int) -> dict:
    from .data import get_dataset

    ds, m, module = cfg["datasets"][dataset], cfg["methods"][method], get_dataset(dataset)
    train = _merge(_merge(cfg["train"], ds["train"]), m["train"])
    if train["augment"] is None:
        train["augment"] = module.TRANSFORMS["train"]
    return {
        "dataset": dataset,
        "setting": setting,
        "setting_def": module.SETTINGS[setting],
        "method": method,
        "params": m["params"],
        "embed_layers": m["embed_layer"],
        "backbone": ds["backbone"],
        "image_size": module.IMAGE_SIZE,
        "normalize": module.NORMALIZE,
        "eval_transform": ds["eval_transform"],
        "train": train,
        "metric": retrieval_metric(cfg, method),
        "seed": seed,
    }


def embed_spec(cfg: dict, dataset: str) -> dict:
    return {**cfg["embed"], "view_augment": cfg["datasets"][dataset]["view_augment"]}


def model_spec(cfg: dict, dataset: str, setting: str, model: str) -> dict:
    """What ``fgbench embed-model`` needs for one external model on one dataset and setting: the
    model entry, the setting, the dataset's image size and eval transform, and the embed spec
    (the support views every method gets). No seed: a model's embeddings are the same under each."""
    from .data import get_dataset
    from .external import embeddings_path

    entry, module = cfg["models"][model], get_dataset(dataset)
    spec = {k: v for k, v in entry.items() if k not in ("evaluate_on", "path")}
    spec.update(model=model, dataset=dataset, setting=setting, setting_def=module.SETTINGS[setting],
                image_size=module.IMAGE_SIZE, eval_transform=cfg["datasets"][dataset]["eval_transform"],
                embed=embed_spec(cfg, dataset))
    if entry["source"] == "embeddings":
        spec["path"] = embeddings_path(entry, dataset, setting)
    if entry["source"] == "released":
        spec["train_spec"] = train_spec(cfg, dataset, setting, entry["method"], 0)
    return spec


def retrieval_metric(cfg: dict, method: str) -> str:
    """The distance ``method``'s embeddings are retrieved with: its own ``metric``, else the
    retrieval protocol's (cosine)."""
    own = (cfg["methods"].get(method) or cfg["models"][method])["metric"]
    return own if own is not None else cfg["protocols"].get("retrieval", PROTOCOLS["retrieval"])["metric"]


def protocol_spec(cfg: dict, protocol: str, method: str | None = None) -> dict:
    """One protocol's parameters; for ``method``, retrieval takes the method's metric."""
    spec = {"name": protocol, **cfg["protocols"][protocol]}
    if method is not None and spec["kind"] == "retrieval":
        spec["metric"] = retrieval_metric(cfg, method)
    return spec


def baseline_labels(cfg: dict) -> dict:
    """``{setting: "method (layer)"}``: each setting's baseline on its first embedded layer (a
    combination: its two models' layers, ``"A+B"``); settings without a baseline are left out."""
    combos = {c["name"]: combination_layer(c) for c in cfg["combinations"]}
    labels = {}
    for setting, name in cfg["compare"]["baseline"].items():
        if name is not None:
            if name in combos:
                layer = combos[name]
            elif name in cfg.get("models", {}):  # an external model: its first layer (none for a file's)
                layer = (cfg["models"][name]["layers"] or [None])[0]
            else:
                layer = cfg["methods"].get(name, {}).get("embed_layer", [None])[0]
            labels[setting] = f"{name} ({layer})" if layer else name
    return labels


def compare_spec(cfg: dict) -> dict:
    """What ``fgbench compare`` needs: the baselines' labels, the test and the resamples."""
    return {"baseline": baseline_labels(cfg), "test": cfg["compare"]["test"], "resamples": cfg["compare"]["resamples"]}


def spec_hash(spec: dict) -> str:
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]

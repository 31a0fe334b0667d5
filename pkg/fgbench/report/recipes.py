"""Recipe cards: an experiment's resolved hyperparameters per method, one table per experiment.

A card is rendered from the per-run train specs that ``fgbench.config`` cuts from the resolved
config (what ``fgbench train`` receives), never written by hand, so it shows what runs. Every key
of the spec's ``train`` section, the method's parameters (with its constructor's defaults for
those the config leaves out: they are part of the recipe too), any other key of the method's
config section (``method.*``) and the backbone becomes a row, so keys added to the config appear
without a change here. One column per method (and setting, when a method runs in several);
datasets whose recipes are identical share a column.
"""

from __future__ import annotations

import inspect
import os

import pandas as pd

from fgbench.io import atomic_write_text

__all__ = ["method_defaults", "run_recipe", "recipe_card", "format_recipe_markdown", "write_recipes"]

#: Where a run executes, not what it trains: left off the card.
EXECUTION_KEYS = {"train.num_workers", "train.device"}
#: Constructor arguments that the training loop fills in, not the config.
BUILT_ARGUMENTS = {"self", "backbone", "num_classes", "num_samples", "epochs"}
MISSING = "—"
#: The order of the card's sections after the run-level rows.
SECTIONS = ("train", "params", "method", "backbone")


def method_defaults(method: str) -> dict:
    """The default value of every parameter of ``method`` that ``methods.<name>.params`` may set."""
    from fgbench.methods import get_method_class

    signature = inspect.signature(get_method_class(method).__init__)
    return {name: p.default for name, p in signature.parameters.items()
            if name not in BUILT_ARGUMENTS and p.default is not inspect.Parameter.empty}


def _selection(spec: dict, labels: str) -> str:
    """How the saved model is chosen (fgbench.train.loop._validation_score): label-free methods keep
    their last epoch; the others the epoch of best validation Recall@1 on their training labels."""
    if labels == "none":
        return "last epoch"
    return f"best val. Recall@1 ({spec['embed_layers'][0]})"


def _flatten(prefix: str, value) -> dict:
    if isinstance(value, dict):  # an empty one (no parameters) makes no row
        return {k: v for key, sub in value.items() for k, v in _flatten(f"{prefix}.{key}", sub).items()}
    return {prefix: value}


def run_recipe(spec: dict) -> dict:
    """One run's recipe as ``{row name: value}``: what it trains on and how it is selected, then
    ``train.*``, ``params.*`` and ``backbone.*`` flattened, the layers and the eval transform."""
    from fgbench.methods import get_method_class

    labels = get_method_class(spec["method"]).labels
    recipe = {"trains on": "no labels" if labels == "none" else f"{spec['setting_def']['train_label']} labels",
              "selection": _selection(spec, labels),
              "layers": spec["embed_layers"],
              "image_size": spec["image_size"],
              "eval_transform": spec["eval_transform"]}
    recipe |= _flatten("train", spec["train"])
    recipe |= _flatten("params", {**method_defaults(spec["method"]), **spec["params"]})
    recipe |= _flatten("backbone", spec["backbone"])
    return {k: v for k, v in recipe.items() if k not in EXECUTION_KEYS}


def _method_keys(method_cfg: dict) -> dict:
    """Keys of ``methods.<name>`` beside params, train and embed_layer (the spec holds those),
    e.g. a per-method evaluation setting, as ``method.*`` rows."""
    return _flatten("method", {k: v for k, v in method_cfg.items() if k not in ("params", "train", "embed_layer")})


def _format(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(_format, value)) or "[]"
    return str(value)


def recipe_card(cfg: dict) -> pd.DataFrame:
    """The card of a resolved config (``fgbench.config.validate``): index the row names, one
    column per method, formatted strings, ``—`` where a method lacks a key."""
    from fgbench.config import runs, train_spec

    cells = {}  # (setting, method) -> [(datasets, recipe)]: datasets with one recipe share it
    for dataset, setting, method, seed in runs(cfg):
        if seed != cfg["seeds"][0]:
            continue  # the recipe is the same for every seed
        recipe = run_recipe(train_spec(cfg, dataset, setting, method, seed)) | _method_keys(cfg["methods"][method])
        recipe = {k: _format(v) for k, v in recipe.items()}
        groups = cells.setdefault((setting, method), [])
        same = next((g for g in groups if g[1] == recipe), None)
        if same:
            same[0].append(dataset)
        else:
            groups.append(([dataset], recipe))
    datasets = list(cfg["benchmark"])
    settings_of = {}
    for setting, method in cells:
        settings_of.setdefault(method, []).append(setting)
    columns = {}
    for (setting, method), groups in cells.items():
        for group_datasets, recipe in groups:
            label = [method] + ([setting] if len(settings_of[method]) > 1 else [])
            label += [", ".join(group_datasets)] if len(datasets) > 1 and group_datasets != datasets else []
            columns[" · ".join(label)] = recipe
    seen = list(dict.fromkeys(k for recipe in columns.values() for k in recipe))
    rows = sorted(seen, key=lambda k: (SECTIONS.index(k.split(".")[0]) if "." in k else -1, seen.index(k)))
    return pd.DataFrame({name: [recipe.get(k, MISSING) for k in rows] for name, recipe in columns.items()},
                        index=pd.Index(rows, name="key"))


def format_recipe_markdown(card: pd.DataFrame, name: str = "") -> str:
    """The card as a Markdown table: one row per key, one column per method."""
    title = f"# Recipe card: {name}" if name else "# Recipe card"
    parts = [title, "",
             "Resolved hyperparameters of every method as `fgbench train` receives them (train.lr is the base "
             "learning rate; params.*_lr_scale and params.*_lr set parameter groups); method parameters the "
             "config leaves out show the method's defaults.", "",
             "| key | " + " | ".join(card.columns) + " |", "|---|" + "---|" * len(card.columns)]
    parts += [f"| {key} | " + " | ".join(row) + " |" for key, row in zip(card.index, card.itertuples(index=False))]
    return "\n".join(parts) + "\n"


def write_recipes(card: pd.DataFrame, csv_path: str | os.PathLike, md_path: str | os.PathLike, name: str = "") -> None:
    """Atomically write the card as CSV (column ``key`` first) and Markdown."""
    atomic_write_text(csv_path, card.to_csv())
    atomic_write_text(md_path, format_recipe_markdown(card, name))

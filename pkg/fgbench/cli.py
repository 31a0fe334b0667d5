"""``fgbench prepare|train|embed|embed-model|evaluate|combine|aggregate|compare|tables|latex|report|figures|tsne|curves|ledger|recipes``: what rules call.

``fgbench results-doc`` (by hand, after a default run) renders docs/results.md's tables.

Each stage takes its job's spec as JSON (``--spec``, cut from the resolved config by
``fgbench.config``) plus paths. A bad input ends with one line, ``fgbench: error: ...``, exit
status 2, and no partial output (every writer writes a temporary file and renames it).
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from .errors import FgbenchError


def _spec(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise FgbenchError(f"--spec is not valid JSON: {e}") from e


def ensure_writable(path) -> None:
    """Fail early, before hours of training, if ``path``'s folder cannot take a file."""
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise FgbenchError(f"output folder {folder} is not writable ({e.strerror}); choose another output path or --directory") from e


def cmd_prepare(args):
    from .data import prepare

    spec = _spec(args.spec)
    ensure_writable(args.out)
    prepare(spec["dataset"], spec, args.out, threads=args.threads)


def cmd_rearrange_val(args):
    from .data.imagenet import rearrange_val

    counts = rearrange_val(args.val_dir, args.solution, args.out, copy=args.copy)
    how = "copies" if args.copy else "symlinks"
    print(f"{counts['images']} validation images in {counts['classes']} wnid folders ({how}) under {args.out}")


def _training_processes(args) -> int:
    """Processes ``fgbench train`` runs: one per GPU with --gpus, else --nproc."""
    if args.nproc < 1 or args.gpus < 0:
        raise FgbenchError(f"--nproc must be at least 1 and --gpus at least 0 (got --nproc {args.nproc}, --gpus {args.gpus})")
    if args.gpus and args.nproc not in (1, args.gpus):
        raise FgbenchError(f"--nproc {args.nproc} disagrees with --gpus {args.gpus}: with --gpus, training runs one "
                           "process per GPU; leave out --nproc")
    processes = args.gpus or args.nproc
    if processes > 1 and "RANK" in os.environ:
        raise FgbenchError("--nproc / --gpus start torchrun themselves; under torchrun, leave them out")
    return processes


def _claim_gpus(n: int) -> None:
    if n:
        from .devices import claim_gpus

        claim_gpus(n)


def cmd_train(args):
    spec = _spec(args.spec)
    ensure_writable(Path(args.out_dir) / "model.pt")
    processes = _training_processes(args)
    if processes > 1:
        from .distributed import check_batch_size, launch

        check_batch_size(spec["train"]["batch_size"], processes)
        _claim_gpus(args.gpus)  # held by this process, the workers' launcher, until they finish
        status = launch(processes, ["train", "--spec", args.spec, "--data", args.data, "--out-dir", args.out_dir])
        if status:
            raise SystemExit(status)  # the workers printed what went wrong
        return
    _claim_gpus(args.gpus)
    from .train import train

    try:
        train(spec, args.data, args.out_dir)
    except FgbenchError:
        if os.environ.get("RANK", "0") != "0":
            raise SystemExit(2) from None  # every rank fails alike; rank 0 says why, once
        raise


def cmd_embed(args):
    from .embed import embed_split

    ensure_writable(args.out)
    _claim_gpus(args.gpus)
    embed_split(args.model, args.data, args.split, _spec(args.spec), args.out, device=args.device)


def cmd_embed_model(args):
    from .external import embed_model

    ensure_writable(args.out)
    if args.copy_of:  # another seed of the same model: the same embeddings
        from .io import atomic_write_bytes

        atomic_write_bytes(args.out, Path(args.copy_of).read_bytes())
        return
    _claim_gpus(args.gpus)
    embed_model(_spec(args.spec), args.data, args.out, device=args.device)


def _model_entry(args) -> tuple[str, dict]:
    """(name, config entry) of the model ``fgbench evaluate-model`` was given."""
    sources = {"torchvision": ("name", args.torchvision), "timm": ("name", args.timm),
               "callable": ("function", args.callable), "released": ("release", args.released),
               "embeddings": ("path", args.embeddings)}
    source, (field, value) = next((s, fv) for s, fv in sources.items() if fv[1])
    entry = {"source": source, field: value}
    options = {"weights": args.weights, "weights_file": args.weights_file, "checkpoint": args.checkpoint,
               "method": args.method, "layers": args.layer}
    entry.update({k: v for k, v in options.items() if v})
    transform = {"size": args.image_size, "resize": args.resize, "mean": args.mean, "std": args.std}
    if any(v is not None for v in transform.values()):
        entry["transform"] = {k: v for k, v in transform.items() if v is not None}
    default = {"embeddings": Path(value).stem, "released": f"{value}_{args.method}",
               "callable": value.split(":")[-1]}.get(source, value)
    return args.name or default, entry


def cmd_evaluate_model(args):
    from .external import evaluate_model, one_model_config
    from .report import load_metrics, summarise, write_summary
    from .report.aggregate import format_markdown

    name, entry = _model_entry(args)
    base = _load_config(argparse.Namespace(config=None, configfile=args.configfile, name=""))[0] if args.configfile else {}
    if args.root:
        base.setdefault("datasets", {}).setdefault(args.dataset, {})
        base["datasets"][args.dataset] = {**(base["datasets"][args.dataset] or {}), "root": args.root}
    protocols = args.protocol or ["fewshot_5way", "retrieval"]
    cfg = one_model_config(name, entry, args.dataset, args.setting, protocols, base)
    ensure_writable(Path(args.workdir) / "summary.csv")
    metrics = evaluate_model(cfg, name, args.workdir, device=_evaluation_device(args), embed_device=args.device or "auto")
    summary = summarise(load_metrics(metrics))
    write_summary(summary, Path(args.workdir) / "summary.csv", Path(args.workdir) / "summary.md")
    print(format_markdown(summary), end="")


def _evaluation_device(args) -> str:
    """``--device``, else the first claimed GPU with ``--gpus N`` (the rule's resources.gpu), else cpu."""
    _claim_gpus(args.gpus)
    return args.device or ("cuda" if args.gpus else "cpu")


def cmd_evaluate(args):
    from .evaluate import evaluate_to_file

    ensure_writable(args.out)
    run, spec = _spec(args.run), _spec(args.spec)
    evaluate_to_file(args.embeddings, spec, run, run.pop("config_hash", ""), args.out, device=_evaluation_device(args))


def cmd_combine(args):
    from .evaluate import load_embeddings
    from .evaluate.combine import combination_rows_and_units
    from .evaluate.units import write_metrics
    from .provenance import row_hash

    ensure_writable(args.out)
    spec, run = _spec(args.spec), _spec(args.run)
    if not isinstance(spec, dict) or not {"combination", "protocol"} <= set(spec):
        raise FgbenchError("--spec must be a JSON object with keys 'combination' and 'protocol'")
    arrays_a, arrays_b = (load_embeddings(path) for path in args.embeddings)
    config_hash = row_hash(run.pop("config_hash", ""), arrays_a, arrays_b)
    try:
        rows, digest, per_layer = combination_rows_and_units(
            arrays_a, arrays_b, spec["combination"], spec["protocol"], run, config_hash,
            device=_evaluation_device(args))
    except ValueError as e:  # e.g. a retrieval protocol, or n_aug above the files' views
        raise FgbenchError(str(e)) from e
    write_metrics(args.out, rows, digest, per_layer, spec["protocol"]["name"])


def cmd_aggregate(args):
    from .report import load_metrics, summarise, write_summary

    ensure_writable(args.csv)
    try:
        metrics = load_metrics(args.metrics)
    except ValueError as e:  # a malformed metrics file: the message names it
        raise FgbenchError(str(e)) from e
    write_summary(summarise(metrics), args.csv, args.markdown)


def cmd_tables(args):
    import pandas as pd

    from .report import write_paper_tables

    ensure_writable(Path(args.out_dir) / "summary.csv")
    write_paper_tables(pd.read_csv(args.summary), args.out_dir)


def cmd_latex(args):
    from .report.comparisons import read_comparisons
    from .report.tables import TABLES, write_latex_tables

    bad = [t for t in args.tables if "/" not in t or t.split("/", 1)[0] not in TABLES]
    if bad:
        raise FgbenchError(f"tables are KIND/DATASET with KIND one of {', '.join(TABLES)}, got {bad}")
    ensure_writable(Path(args.out_dir) / "x.tex")
    write_latex_tables(read_comparisons(args.comparisons), [tuple(t.split("/", 1)) for t in args.tables], args.out_dir)


def cmd_compare(args):
    from .report.comparisons import comparisons, load_runs, ranks, write_comparisons
    from .report.plots import plot_ranks

    spec = _spec(args.spec)
    ensure_writable(Path(args.out_dir) / "comparisons.csv")
    ensure_writable(args.ranks_plot)
    try:
        runs = load_runs(args.metrics)
    except ValueError as e:  # a malformed metrics or per-unit file: the message names it
        raise FgbenchError(str(e)) from e
    table = comparisons(runs, spec["baseline"], test=spec["test"], n_boot=spec["resamples"])
    results = ranks(table)
    write_comparisons(table, results, args.out_dir)
    plot_ranks(results, args.ranks_plot)


def cmd_tsne(args):
    from .evaluate import layer_names, load_embeddings
    from .report import plot_tsne

    ensure_writable(args.out)
    arrays = load_embeddings(args.embeddings)
    plot_tsne(arrays, args.layer or layer_names(arrays)[0], args.out, max_points=args.points,
              seed=args.seed, name=args.name)


def cmd_report(args):
    from .report.comparisons import read_comparisons
    from .report.plots import plot_differences, plot_forest

    ensure_writable(args.out)
    table = read_comparisons(args.comparisons)
    plot_forest(table, args.protocol, args.out)
    plot_differences(table, args.protocol, args.differences)


def cmd_figures(args):
    from .io import atomic_write_text
    from .report.plots import figures_html

    ensure_writable(args.out)
    missing = [p for p in args.pngs if not Path(p).is_file()]
    if missing:
        raise FgbenchError(f"no such PNG file(s): {', '.join(missing)}")
    atomic_write_text(args.out, figures_html(args.pngs))


def cmd_curves(args):
    from .report.curves import plot_curves

    ensure_writable(args.out)
    plot_curves(args.log, args.out, config_path=args.config, name=args.name)


def _named_paths(pairs) -> dict:
    """``NAME=PATH`` arguments as {name: path}."""
    named = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
    if len(named) != len(pairs):
        raise FgbenchError(f"--summary takes EXPERIMENT=PATH pairs (e.g. coarse_to_fine_breeds=results/"
                           f"coarse_to_fine_breeds/tables/summary.csv), got {' '.join(pairs)}")
    return named


def cmd_ledger(args):
    from .report.ledger import ledger_table, load_ledger, read_summaries, write_ledger

    ensure_writable(args.csv)
    table = ledger_table(load_ledger(args.ledger), read_summaries(_named_paths(args.summary)))
    write_ledger(table, args.csv, args.markdown)


def _load_config(args) -> tuple[dict, str]:
    """The raw config of --configfile (YAML) or --config (JSON) and the card's name."""
    import yaml

    if args.config is not None:
        return _spec(args.config), args.name
    try:
        return yaml.safe_load(Path(args.configfile).read_text(encoding="utf-8")), args.name or Path(args.configfile).stem
    except (OSError, yaml.YAMLError) as e:
        raise FgbenchError(f"cannot read the config {args.configfile}: {e}") from e


def cmd_recipes(args):
    from .config import validate
    from .report.recipes import format_recipe_markdown, recipe_card, write_recipes

    raw, name = _load_config(args)
    card = recipe_card(validate(raw))
    if args.csv or args.markdown:
        if not (args.csv and args.markdown):
            raise FgbenchError("give both --csv and --markdown, or neither (the card is then printed)")
        ensure_writable(args.csv)
        write_recipes(card, args.csv, args.markdown, name)
    else:
        print(format_recipe_markdown(card, name), end="")


def cmd_results_doc(args):
    from .report.results_doc import update_doc

    changed = update_doc(args.summary, args.doc, check=args.check)
    if args.check and changed:
        raise FgbenchError(f"the tables in {args.doc} differ from those of {args.summary}; regenerate them with "
                           f"fgbench results-doc --summary {args.summary} --doc {args.doc}")
    print(f"{args.doc}: tables {'up to date' if not changed else 'checked' if args.check else 'rewritten'} "
          f"from {args.summary}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fgbench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("prepare", help="read a dataset's official files, write the prepared .npz")
    s.add_argument("--spec", required=True, help="JSON: the dataset's config section plus 'dataset'")
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=1, help="images decoded at once when building an image store")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("rearrange-val", help="sort the flat ImageNet val images into wnid folders (BREEDS)")
    s.add_argument("--val-dir", required=True, help="the flat folder of ILSVRC2012_val_*.JPEG")
    s.add_argument("--solution", required=True, help="LOC_val_solution.csv (ImageId,PredictionString)")
    s.add_argument("--out", required=True, help="new folder: <out>/<wnid>/<ImageId>.JPEG")
    s.add_argument("--copy", action="store_true", help="copy the images instead of symlinking them")
    s.set_defaults(func=cmd_rearrange_val)

    s = sub.add_parser("train", help="train one method (resumes from out-dir's checkpoint)")
    s.add_argument("--spec", required=True, help="JSON from fgbench.config.train_spec")
    s.add_argument("--data", required=True, help="prepared dataset (.npz)")
    s.add_argument("--out-dir", required=True)
    s.add_argument("--nproc", type=int, default=1,
                   help="training processes on this machine under torchrun (DDP; gloo on CPU); "
                        "train.batch_size is the global batch, split evenly")
    s.add_argument("--gpus", type=int, default=0,
                   help="claim this many free GPUs of this machine (the rule's resources.gpu) and train "
                        "with one process per GPU (DDP over NCCL when more than one)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("embed", help="embeddings of one split, with augmented views for test")
    s.add_argument("--spec", required=True, help="JSON from fgbench.config.embed_spec")
    s.add_argument("--model", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--split", default="test", choices=("train", "val", "test"))
    s.add_argument("--device", default="auto")
    s.add_argument("--gpus", type=int, default=0,
                   help="claim this many free GPUs of this machine (the rule's resources.gpu); embeds on the first")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_embed)

    s = sub.add_parser("embed-model", help="test embeddings of an external model (config 'models') on one dataset and setting")
    s.add_argument("--spec", required=True, help="JSON from fgbench.config.model_spec")
    s.add_argument("--data", required=True, help="prepared dataset (.npz)")
    s.add_argument("--device", default="auto")
    s.add_argument("--gpus", type=int, default=0,
                   help="claim this many free GPUs of this machine (the rule's resources.gpu); embeds on the first")
    s.add_argument("--copy-of", help="the model's embeddings under another seed: copied, not recomputed")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_embed_model)

    s = sub.add_parser("evaluate-model", help="evaluate one external model on one dataset, no config needed; "
                       "prints its table rows (docs/usage.md)")
    source = s.add_mutually_exclusive_group(required=True)
    source.add_argument("--torchvision", metavar="BUILDER", help="a torchvision model builder, e.g. resnet18 "
                        "(with --weights or --weights-file)")
    source.add_argument("--timm", metavar="MODEL", help="a timm model name (with --checkpoint)")
    source.add_argument("--callable", metavar="MODULE:FUNCTION",
                        help="your function returning an nn.Module or an encode function (image batch -> features)")
    source.add_argument("--released", metavar="RELEASE", help="a seed release's checkpoint (with --method and --checkpoint)")
    source.add_argument("--embeddings", metavar="NPZ", help="a precomputed embeddings file (docs/usage.md)")
    s.add_argument("--weights", help="torchvision weights name, e.g. IMAGENET1K_V1 (downloaded once by torchvision)")
    s.add_argument("--weights-file", help="a saved torchvision state dict")
    s.add_argument("--checkpoint", help="timm or released checkpoint file")
    s.add_argument("--method", help="the fgbench method a released checkpoint is loaded into, e.g. ancor")
    s.add_argument("--layer", action="append", help="layer to embed (repeatable): pooled (default) or a module name")
    s.add_argument("--image-size", type=int, help="crop size the network sees (default: its weights' transform)")
    s.add_argument("--resize", type=int, help="shorter side before the centre crop (default: its weights' transform)")
    s.add_argument("--mean", type=float, nargs="+", help="per-channel normalisation mean")
    s.add_argument("--std", type=float, nargs="+", help="per-channel normalisation std")
    s.add_argument("--name", help="what the tables call the model (default: from the builder, function or file)")
    s.add_argument("--dataset", required=True, help="e.g. fashion_mnist")
    s.add_argument("--setting", action="append", help="repeatable; default: every setting of the dataset")
    s.add_argument("--protocol", action="append", help="repeatable; default: fewshot_5way and retrieval")
    s.add_argument("--root", help="the dataset's folder (config key datasets.<name>.root)")
    s.add_argument("--configfile", help="an experiment config whose dataset, embed and protocol sections to use "
                   "(its episodes); default: fgbench's defaults, which the default benchmark uses")
    s.add_argument("--workdir", default="results/evaluate-model", help="where data, embeddings and metrics go")
    s.add_argument("--device", default=None, help="torch device (default: cuda with --gpus, else cpu for the "
                   "solver and cuda when present for embedding)")
    s.add_argument("--gpus", type=int, default=0, help="claim this many free GPUs of this machine")
    s.set_defaults(func=cmd_evaluate_model)

    s = sub.add_parser("evaluate", help="one protocol on one embeddings file -> metrics JSON")
    s.add_argument("--spec", required=True, help="JSON from fgbench.config.protocol_spec")
    s.add_argument("--run", required=True, help="JSON: dataset, setting, method, seed, config_hash")
    s.add_argument("--embeddings", required=True)
    s.add_argument("--device", default=None, help="torch device of the few-shot solver (default: cuda with --gpus, else cpu)")
    s.add_argument("--gpus", type=int, default=0,
                   help="claim this many free GPUs of this machine (the rule's resources.gpu); evaluates on the first")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("combine", help="a combination of two models on one fewshot protocol -> metrics JSON")
    s.add_argument("--spec", required=True, help="JSON: {combination: a resolved config entry, protocol: protocol_spec}")
    s.add_argument("--run", required=True, help="JSON: dataset, setting, method (the combination's name), seed, config_hash")
    s.add_argument("--embeddings", required=True, nargs=2, metavar=("A", "B"), help="test embeddings of models A and B")
    s.add_argument("--device", default=None, help="torch device of the few-shot solver (default: cuda with --gpus, else cpu)")
    s.add_argument("--gpus", type=int, default=0,
                   help="claim this many free GPUs of this machine (the rule's resources.gpu); evaluates on the first")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_combine)

    s = sub.add_parser("aggregate", help="metrics JSON files -> summary.csv and summary.md")
    s.add_argument("--csv", required=True)
    s.add_argument("--markdown", required=True)
    s.add_argument("metrics", nargs="+")
    s.set_defaults(func=cmd_aggregate)

    s = sub.add_parser("tables", help="summary.csv -> the papers' tables (coarse_to_fine, retrieval, closed_set)")
    s.add_argument("--summary", required=True)
    s.add_argument("--out-dir", required=True, help="writes {coarse_to_fine,retrieval,closed_set}.{csv,md} here")
    s.set_defaults(func=cmd_tables)

    s = sub.add_parser("latex", help="comparisons.csv -> the papers' tables in LaTeX (booktabs), one file per table")
    s.add_argument("--comparisons", required=True)
    s.add_argument("--out-dir", required=True, help="writes KIND_DATASET.tex here")
    s.add_argument("tables", nargs="+", metavar="KIND/DATASET", help="e.g. coarse_to_fine/fashion_mnist")
    s.set_defaults(func=cmd_latex)

    s = sub.add_parser("compare", help="metrics (and per-unit) files -> comparisons.{csv,md}, ranks.{csv,md}, ranks plot")
    s.add_argument("--spec", required=True, help="JSON from fgbench.config.compare_spec")
    s.add_argument("--out-dir", required=True)
    s.add_argument("--ranks-plot", required=True, help="PNG of the critical-difference diagrams")
    s.add_argument("metrics", nargs="+", help="metrics JSON files; the per-unit .npz beside each is read when present")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("report", help="forest and paired-difference plots of one protocol from comparisons.csv")
    s.add_argument("--comparisons", required=True)
    s.add_argument("--protocol", required=True)
    s.add_argument("--out", required=True, help="the forest plot (PNG)")
    s.add_argument("--differences", required=True, help="the paired-difference plot (PNG)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("figures", help="PNG files -> one HTML fragment with the images inline (the report's start page)")
    s.add_argument("--out", required=True)
    s.add_argument("pngs", nargs="+")
    s.set_defaults(func=cmd_figures)

    s = sub.add_parser("curves", help="training curves of one run (loss terms, validation Recall@1, learning rate)")
    s.add_argument("--log", required=True, help="the run's train_log.csv")
    s.add_argument("--config", help="the run's config.yaml, whose best_epoch is marked (default: beside the log)")
    s.add_argument("--name", default="", help="what the title calls the run")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_curves)

    s = sub.add_parser("ledger", help="the reproduction ledger beside the runs' summaries -> ledger.csv and ledger.md")
    s.add_argument("--ledger", required=True, help="the ledger file (workflow/ledger.yaml)")
    s.add_argument("--summary", nargs="*", default=[], metavar="EXPERIMENT=PATH",
                   help="each run experiment's summary.csv; entries of other experiments are 'not run'")
    s.add_argument("--csv", required=True)
    s.add_argument("--markdown", required=True)
    s.set_defaults(func=cmd_ledger)

    s = sub.add_parser("recipes", help="an experiment's recipe card (resolved hyperparameters per method)")
    source = s.add_mutually_exclusive_group(required=True)
    source.add_argument("--configfile", help="a config file, e.g. workflow/experiments/vmf_mnist.yaml")
    source.add_argument("--config", help="the config as JSON (what the rule passes)")
    s.add_argument("--name", default="", help="the card's title (default: the config file's name)")
    s.add_argument("--csv", help="write the card here (with --markdown) instead of printing it")
    s.add_argument("--markdown")
    s.set_defaults(func=cmd_recipes)

    s = sub.add_parser("results-doc", help="rewrite the result tables of docs/results.md from a summary.csv")
    s.add_argument("--summary", required=True, help="e.g. docs/default-run/summary.csv")
    s.add_argument("--doc", required=True, help="e.g. docs/results.md (tables go between its markers)")
    s.add_argument("--check", action="store_true", help="write nothing; fail when the tables differ")
    s.set_defaults(func=cmd_results_doc)

    s = sub.add_parser("tsne", help="two-panel t-SNE plot (coarse | fine labels) of one embeddings file")
    s.add_argument("--embeddings", required=True)
    s.add_argument("--layer", help="default: the file's first layer (the one that selects the model)")
    s.add_argument("--points", type=int, default=2000, help="at most this many images (stratified subsample)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--name", default="", help="what the title calls the run")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_tsne)
    return p


def one_line(error: FgbenchError) -> str:
    """The error's own message. An error raised in a DataLoader worker (a corrupt image) comes
    back wrapped in the worker's traceback; its last line holds the message."""
    text = str(error)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return text


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except FgbenchError as e:
        print(f"fgbench: error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

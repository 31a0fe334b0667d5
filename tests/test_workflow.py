"""Snakemake end to end: dry-run job counts, a tiny real run, a single target, bad config."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "2"]


def snakemake(workdir, *args, check=True):
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def job_counts(output: str) -> dict:
    """Parse Snakemake's 'Job stats' table."""
    lines = output[output.index("Job stats:"):].splitlines()[3:]
    counts = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


TINY_PROTOCOLS = ("fewshot_5way", "fewshot_intra", "retrieval", "closed_set")


def tiny_config(fashion_root, **changes):
    """The default config on a few images for one epoch: one model per method family, every
    combination kind, one protocol of each shape."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["benchmark"]["fashion_mnist"] = {"coarse_to_fine": ["supervised_coarse", "ancor", "scgm_a"],
                                         "open_set": ["lsd", "stml"], "closed_set": ["vmf"]}
    cfg["datasets"]["fashion_mnist"].update(
        root=str(fashion_root), max_images_per_class={"train": 60, "val": 20, "test": 30})
    cfg["train"]["epochs"] = 1
    cfg["protocols"] = {name: cfg["protocols"][name] for name in TINY_PROTOCOLS}
    for name in TINY_PROTOCOLS[:2]:
        cfg["protocols"][name]["episodes"] = 20
    cfg.update(changes)
    return cfg


def write_config(workdir: Path, cfg: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    return workdir


def test_dry_run_job_counts_for_default_config(tmp_path):
    write_config(tmp_path, yaml.safe_load((REPO / "config.yaml").read_text()))
    counts = job_counts(snakemake(tmp_path, "-n").stdout)
    # 1 dataset; 15 runs (6 coarse-to-fine, 5 open-set, 4 closed-set) x 5 protocols, plus
    # closed-set accuracy for the 4 closed-set runs; 3 combinations x 4 few-shot protocols; a
    # t-SNE plot per coarse-to-fine run; a plot per protocol.
    assert counts == {"aggregate": 1, "all": 1, "combine": 12, "embed": 15, "evaluate": 79, "plot": 6,
                      "prepare": 1, "tables": 1, "train": 15, "tsne": 6, "total": 137}
    seeds = yaml.safe_load((REPO / "config.yaml").read_text()) | {"seeds": [0, 1, 2]}
    write_config(tmp_path, seeds)
    counts = job_counts(snakemake(tmp_path, "-n").stdout)
    assert counts["train"] == 45 and counts["combine"] == 36


@pytest.mark.workflow
def test_tiny_run_of_the_whole_dag(real_fashion, tmp_path):
    write_config(tmp_path, tiny_config(real_fashion))
    snakemake(tmp_path)
    summary = pd.read_csv(tmp_path / "results/tables/summary.csv")
    combinations = {"ensemble_sup+ancor", "concat_sup+ancor", "cascade_sup+ancor"}
    assert set(summary["method"]) == {"supervised_coarse", "ancor", "scgm_a", "lsd", "stml", "vmf"} | combinations
    assert set(summary["protocol"]) == set(TINY_PROTOCOLS)
    assert set(summary["setting"]) == {"coarse_to_fine", "open_set", "closed_set"}
    # every configured layer is evaluated, and named
    ancor = summary.query("method == 'ancor' and protocol == 'fewshot_5way'")
    assert set(ancor["layer"]) == {"backbone", "head"}
    assert set(summary.query("method == 'cascade_sup+ancor'")["layer"]) == {"logits+backbone"}
    assert summary["mean"].between(0, 1).all()
    # 30 test images per class: chance is 20% for 5-way; a trained embedding does better.
    five_way = summary.query("protocol == 'fewshot_5way' and method == 'lsd' and setting == 'open_set'")
    assert five_way["mean"].item() > 0.3
    closed = summary.query("protocol == 'closed_set'")
    assert set(closed["method"]) == {"vmf"} and set(closed["layer"]) == {"probs"}
    assert set(closed["metric"]) >= {"accuracy", "ece"}
    assert (tmp_path / "results/tables/summary.md").read_text().count("|") > 10
    for proto in TINY_PROTOCOLS:
        assert (tmp_path / f"results/plots/{proto}.png").stat().st_size > 5000
    assert (tmp_path / "results/plots/tsne/fashion_mnist/coarse_to_fine/scgm_a/seed0.png").stat().st_size > 5000
    table = (tmp_path / "results/tables/coarse_to_fine.md").read_text()
    assert "scgm_a" in table and "±" in table
    assert "| open_set | stml | head |" in (tmp_path / "results/tables/retrieval.md").read_text()
    assert "| vmf | probs |" in (tmp_path / "results/tables/closed_set.md").read_text()
    report = snakemake(tmp_path, "--report", "results/report.html")
    assert (tmp_path / "results/report.html").stat().st_size > 10000, report.stderr[-2000:]
    # Nothing left to do: the run is complete.
    assert "Nothing to be done" in snakemake(tmp_path, "-n").stdout


@pytest.mark.workflow
def test_single_target_builds_only_what_it_needs(real_fashion, tmp_path):
    write_config(tmp_path, tiny_config(real_fashion))
    target = "results/metrics/fashion_mnist/open_set/lsd/seed0/retrieval.json"
    dry = job_counts(snakemake(tmp_path, "-n", target).stdout)
    assert dry == {"embed": 1, "evaluate": 1, "prepare": 1, "train": 1, "total": 4}
    snakemake(tmp_path, target)
    assert (tmp_path / target).exists()
    assert not (tmp_path / "results/models/fashion_mnist/coarse_to_fine").exists()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"benchmark": {"fashion_mnist": {"open_set": ["tripplet"]}}},
         "unknown method 'tripplet'; valid methods: ancor, arcface, contrastive, cosine_softmax, lsd, margin, moco, "
         "multisimilarity, normsoftmax, proxynca, scgm_a, scgm_g, softmax, stml, supervised_coarse, triplet, vmf"),
        ({"protocols": {"fewshot_3way": {}}}, "unknown protocol 'fewshot_3way'"),
        ({"benchmark": {"mnist_fashion": {"open_set": ["triplet"]}}}, "unknown dataset 'mnist_fashion'"),
        ({"train": {"epochs": 0}}, "config key 'train.epochs' must be a positive integer, got 0"),
    ],
)
def test_bad_config_stops_before_any_job(tmp_path, changes, message):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text()) | changes
    proc = snakemake(write_config(tmp_path, cfg), "-n", check=False)
    assert proc.returncode != 0
    assert f"fgbench: config error: {message}" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_lint_is_clean(tmp_path):
    write_config(tmp_path, yaml.safe_load((REPO / "config.yaml").read_text()))
    proc = snakemake(tmp_path, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("experiment", sorted(p.name for p in (REPO / "workflow/experiments").glob("*.yaml")))
def test_paper_scale_experiments_dry_run(tmp_path, experiment):
    """The paper configs build their whole DAG without data (they run on GPUs, not here); an
    experiment file replaces the default config instead of merging into it."""
    cfg = yaml.safe_load((REPO / "workflow/experiments" / experiment).read_text())
    write_config(tmp_path, yaml.safe_load((REPO / "config.yaml").read_text()))  # must not leak in
    counts = job_counts(snakemake(tmp_path, "-n", "--configfile", str(REPO / "workflow/experiments" / experiment)).stdout)
    runs = sum(len(methods) for settings in cfg["benchmark"].values() for methods in settings.values())
    assert counts["train"] == runs * len(cfg["seeds"])
    assert counts["prepare"] == len(cfg["benchmark"])
    fewshot = [name for name in cfg["protocols"] if name.startswith("fewshot")]
    assert counts.get("combine", 0) == len(cfg.get("combinations", [])) * len(fewshot) * len(cfg["benchmark"]) * len(cfg["seeds"])

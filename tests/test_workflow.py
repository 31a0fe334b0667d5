"""Snakemake end to end: dry-run job counts, a tiny real run, a single target, bad config."""

import re
import signal
import subprocess
import sys
import time
import tomllib
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
    # t-SNE plot per coarse-to-fine run; a training-curves plot per run; the plots of a protocol;
    # the comparison tables; the LaTeX tables; the comparison plots inline for the report; the recipe card.
    assert counts == {"aggregate": 1, "all": 1, "combine": 12, "compare": 1, "curves": 15, "embed": 15,
                      "evaluate": 79, "figures": 1, "latex": 1, "plot": 6, "prepare": 1, "recipes": 1, "tables": 1,
                      "train": 15, "tsne": 6, "total": 156}
    seeds = yaml.safe_load((REPO / "config.yaml").read_text()) | {"seeds": [0, 1, 2]}
    write_config(tmp_path, seeds)
    counts = job_counts(snakemake(tmp_path, "-n").stdout)
    assert counts["train"] == 45 and counts["combine"] == 36


@pytest.mark.workflow
def test_each_run_is_retrieved_with_its_method_metric(tmp_path):
    """The evaluate job's spec carries the run's method metric (STML's release scores its raw f
    with Euclidean distance); other methods keep cosine."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["benchmark"] = {"fashion_mnist": {"open_set": ["triplet", "stml"]}}
    cfg["methods"]["stml"]["metric"] = "euclidean"
    cfg["protocols"] = {"retrieval": {}}
    cfg.pop("combinations")
    proc = snakemake(write_config(tmp_path, cfg), "-n", "-p", "--forceall")
    commands = [line for line in proc.stdout.splitlines() if "fgbench evaluate" in line]
    metric = {m: next(c for c in commands if f'"method": "{m}"' in c) for m in ("triplet", "stml")}
    assert '"metric": "euclidean"' in metric["stml"] and '"metric": "cosine"' in metric["triplet"]


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
        assert (tmp_path / f"results/plots/{proto}_differences.png").stat().st_size > 5000
    comparisons = pd.read_csv(tmp_path / "results/tables/comparisons.csv", keep_default_na=False)
    five_way = comparisons.query("protocol == 'fewshot_5way' and setting == 'coarse_to_fine'")
    assert set(five_way["baseline"]) == {"supervised_coarse (backbone)"}
    assert set(five_way["interval"]) == {"units (1 seed)"}  # one seed: over episodes only
    assert five_way.query("label == 'ancor (head)'")["test"].item() == "paired t over units"
    assert set(comparisons.query("setting == 'open_set'")["note"]) == {"baseline triplet (head) absent"}
    latex = (tmp_path / "results/tables/coarse_to_fine_fashion_mnist.tex").read_text()
    assert r"\toprule" in latex and r"\mathbf{" in latex and "scgm\\_a (head)" in latex
    assert (tmp_path / "results/tables/retrieval_fashion_mnist.tex").exists()
    assert (tmp_path / "results/tables/closed_set_fashion_mnist.tex").exists()
    assert (tmp_path / "results/plots/ranks.png").stat().st_size > 5000
    assert (tmp_path / "results/plots/comparisons.html").read_text().count("<img") == 2 * len(TINY_PROTOCOLS) + 1
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
def test_two_seeds_give_intervals_across_seeds(real_fashion, tmp_path):
    """Two seeds of two open-set methods, one protocol: the comparison table resamples seeds and
    episodes, and pairs the methods on their shared episodes."""
    cfg = tiny_config(real_fashion, seeds=[0, 1], combinations=[], benchmark={"fashion_mnist": {"open_set": ["triplet", "margin"]}})
    cfg["protocols"] = {"fewshot_5way": cfg["protocols"]["fewshot_5way"]}
    write_config(tmp_path, cfg)
    snakemake(tmp_path, "results/tables/comparisons.csv")
    table = pd.read_csv(tmp_path / "results/tables/comparisons.csv", keep_default_na=False).set_index("label")
    assert set(table["interval"]) == {"seeds × units"} and set(table["n_seeds"]) == {2}
    assert table.loc["triplet (head)", "baseline"] == "triplet (head)"
    assert table.loc["margin (head)", "test"] == "paired t over units"  # 2 seeds: the pooled episode differences
    assert table.loc["margin (head)", "diff_lo"] <= table.loc["margin (head)", "diff"] <= table.loc["margin (head)", "diff_hi"]


@pytest.mark.workflow
def test_batch_augmentation_on_the_device_in_a_tiny_workflow(real_fashion, tmp_path):
    """ANCOR with MoCo-v2's augmentation split (workers: uint8 crops; the loop: colour jitter,
    grayscale and blur on the batch), through training, few-shot evaluation and the curves."""
    cfg = tiny_config(real_fashion, combinations=[], benchmark={"fashion_mnist": {"coarse_to_fine": ["ancor"]}})
    cfg["methods"]["ancor"]["train"] = {"augment": "moco_v2", "batch_augment": True}
    cfg["protocols"] = {"fewshot_5way": cfg["protocols"]["fewshot_5way"]}
    run = "fashion_mnist/coarse_to_fine/ancor/seed0"
    snakemake(write_config(tmp_path, cfg), f"results/metrics/{run}/fewshot_5way.json", f"results/plots/curves/{run}.png")
    spec = yaml.safe_load((tmp_path / f"results/models/{run}/config.yaml").read_text())
    assert spec["train"]["batch_augment"] is True and spec["train"]["augment"] == "moco_v2"
    log = pd.read_csv(tmp_path / f"results/models/{run}/train_log.csv")
    assert (log["images_per_s"] > 0).all() and log["data_wait"].between(0, 1).all()
    rows = yaml.safe_load((tmp_path / f"results/metrics/{run}/fewshot_5way.json").read_text())  # JSON is YAML
    assert {r["layer"] for r in rows} == {"backbone", "head"} and all(0 <= r["value"] <= 1 for r in rows)
    assert (tmp_path / f"results/plots/curves/{run}.png").stat().st_size > 5000


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
        ({"resources": {"train": {"mem_mb": "lots"}}},
         "config key 'resources.train.mem_mb' must be a whole number >= 1 (MB), got 'lots'"),
        ({"resources": {"train": {"runtime": 1.5}}},
         "config key 'resources.train.runtime' must be a whole number >= 1 (minutes), got 1.5"),
        ({"resources": {"train": {"gpus": 1}}}, "unknown resource 'gpus' in 'resources.train'"),
        ({"resources": {"trian": {"gpu": 1}}}, "unknown rule 'trian' in 'resources'"),
        ({"datasets": {"fashion_mnist": {"resources": {"embed": {"threads": "four"}}}}},
         "config key 'datasets.fashion_mnist.resources.embed.threads' must be a whole number >= 1, got 'four'"),
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
    proc = paper(tmp_path, "--lint", "--config", "experiments=[vmf_mnist]")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "not present in the Snakefile" not in proc.stderr  # local rules keep their experiment prefix


def test_conda_env_describes_the_pip_environment():
    """envs/fgbench.yaml (for --sdm conda) lists exactly pyproject's dependencies, and its
    post-deploy script installs fgbench itself from the checkout the Snakefile names."""
    env = yaml.safe_load((REPO / "envs/fgbench.yaml").read_text())
    pip = next(dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert sorted(pip) == sorted(project["dependencies"])
    assert f"python={sys.version_info.major}.{sys.version_info.minor}" in env["dependencies"]
    assert project["requires-python"] == ">=3.11"
    deploy = (REPO / "envs/fgbench.post-deploy.sh").read_text()
    assert 'pip install --no-deps --no-build-isolation -e "${FGBENCH_ROOT' in deploy
    assert "FGBENCH_ROOT" in (REPO / "workflow/rules/common.smk").read_text()
    rules = "".join(p.read_text() for p in (REPO / "workflow/rules").glob("*.smk"))
    assert rules.count("shell:") == rules.count('"../../envs/fgbench.yaml"')


def job_resources(output: str, rule: str) -> list:
    """The resources of every job of ``rule`` in a dry run's output, as {name: value}."""
    jobs = [job for job in re.split(r"\n(?:local)?rule ", output)[1:] if job.startswith(f"{rule}:")]
    lines = [next(line for line in job.splitlines() if line.strip().startswith("resources:")) for job in jobs]
    return [dict(item.split("=", 1) for item in line.split(":", 1)[1].strip().split(", ")) for line in lines]


def test_resources_come_from_the_config_per_rule_and_per_dataset(tmp_path):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    # a second dataset with a class hierarchy (the default protocols include intra-class ones)
    cfg["benchmark"]["cifar100"] = {"closed_set": ["softmax"]}
    cfg["resources"] = {"train": {"gpu": 1, "mem_mb": 8000, "runtime": 120, "cpus_per_task": 4, "threads": 2},
                        "evaluate": {"mem_mb": 2000, "gpu": 1}}
    cfg["datasets"]["cifar100"] = {"resources": {"train": {"mem_mb": 16000, "runtime": 30}}}
    out = snakemake(write_config(tmp_path, cfg), "-n", "--cores", "8").stdout
    train = job_resources(out, "train")
    common = {"tmpdir": "/tmp", "cpus_per_task": "4", "gpu": "1"}
    fashion = {**common, "mem_mb": "8000", "mem": "8 GB", "mem_mib": "7630", "runtime": "120"}
    cifar100 = {**common, "mem_mb": "16000", "mem": "16 GB", "mem_mib": "15259", "runtime": "30"}
    assert train.count(fashion) == 15 and train.count(cifar100) == 1
    assert all(r == {"tmpdir": "/tmp", "gpu": "0"} for r in job_resources(out, "embed"))
    assert {(r["mem_mb"], r["gpu"]) for r in job_resources(out, "evaluate")} == {("2000", "1")}
    assert {r["gpu"] for r in job_resources(out, "combine")} == {"0"}  # combine's own key, unset
    assert "threads: 2" in out.split("rule train:")[1].split("rule ")[0]


def test_a_retried_job_gets_more_memory_and_time(tmp_path):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["resources"] = {"prepare": {"mem_mb": 100, "runtime": 5}}
    cfg["datasets"]["fashion_mnist"].update(root=str(tmp_path / "missing"), download_dir=str(tmp_path / "missing"))
    proc = snakemake(write_config(tmp_path, cfg), "--retries", "1", "--until", "prepare", check=False)
    assert proc.returncode != 0  # the dataset is missing: both attempts fail
    attempts = job_resources(proc.stdout + proc.stderr, "prepare")
    assert [(r["mem_mb"], r["runtime"]) for r in attempts] == [("100", "5"), ("200", "10")]


@pytest.mark.workflow
def test_a_second_run_on_the_same_directory_is_refused_with_the_unlock_command(real_fashion, tmp_path):
    cfg = tiny_config(real_fashion, benchmark={"fashion_mnist": {"open_set": ["triplet"]}}, combinations=[])
    cfg["train"]["epochs"] = 500  # keeps the first run (and its lock) busy until it is stopped
    write_config(tmp_path, cfg)
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen([*SNAKEMAKE, "--directory", str(tmp_path)], stdout=out, stderr=subprocess.STDOUT)
    try:
        while "rule train:" not in log.read_text():  # the lock is taken before any job starts
            assert first.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        second = snakemake(tmp_path, check=False)
        assert first.poll() is None, "the first run ended before the second started"
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    assert second.returncode != 0
    assert "Directory cannot be locked" in second.stderr and "--unlock" in second.stderr


# --- workflow/paper.smk: every paper config in one DAG -------------------------------------------

PAPER = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow/paper.smk"), "--cores", "2"]
EXPERIMENTS = {p.stem: yaml.safe_load(p.read_text()) for p in sorted((REPO / "workflow/experiments").glob("*.yaml"))}


def paper(workdir, *args):
    return subprocess.run([*PAPER, "--directory", str(workdir), *args], capture_output=True, text=True)


def train_jobs(cfg: dict) -> int:
    return len(cfg["seeds"]) * sum(len(ms) for settings in cfg["benchmark"].values() for ms in settings.values())


def test_paper_union_is_one_dag_of_every_experiment(tmp_path):
    """Every paper config builds its whole DAG without data (they run on GPUs, not here), in one
    DAG of at least 1,000 jobs (benchmarks/dag.py times it)."""
    proc = paper(tmp_path, "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = job_counts(proc.stdout)
    assert counts["total"] >= 1000
    for name, cfg in EXPERIMENTS.items():
        assert counts[f"{name}_train"] == train_jobs(cfg), name
        assert counts[f"{name}_prepare"] == len(cfg["benchmark"]), name
        fewshot = [p for p in cfg["protocols"] if p.startswith("fewshot")]
        combinations = len(cfg.get("combinations", [])) * len(fewshot) * len(cfg["benchmark"]) * len(cfg["seeds"])
        assert counts.get(f"{name}_combine", 0) == combinations, name
    # each experiment writes under results/<experiment>/: the 128-d and 512-d runs of the same
    # loss on the same dataset are different files
    for dim in (128, 512):
        assert f"output: results/metric_learning_cub_cars_{dim}/models/cub200/open_set/triplet/seed0/model.pt" in proc.stdout


def test_an_experiment_file_replaces_the_default_config(tmp_path):
    write_config(tmp_path, yaml.safe_load((REPO / "config.yaml").read_text()))  # must not leak in
    experiment = REPO / "workflow/experiments/vmf_retrieval_sop.yaml"
    counts = job_counts(snakemake(tmp_path, "-n", "--configfile", str(experiment)).stdout)
    assert counts["train"] == train_jobs(EXPERIMENTS["vmf_retrieval_sop"]) and counts["prepare"] == 1


def test_paper_subset_with_your_dataset_paths(tmp_path):
    chosen = ["vmf_retrieval_cub200", "metric_learning_cub_cars_128"]
    proc = paper(tmp_path, "-n", "--config", f"experiments=[{','.join(chosen)}]", "datasets={cub200: {root: /my/cub}}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = job_counts(proc.stdout)
    assert {k.rsplit("_", 1)[0] for k in counts if k.endswith("_train")} == set(chosen)
    prepares = [job for job in proc.stdout.split("\nrule ") if "_prepare:" in job.split("\n")[0]]
    cub = [job for job in prepares if "wildcards: dataset=cub200" in job]
    assert len(cub) == 2 and all('\\"root\\": \\"/my/cub\\"' in job or '"root": "/my/cub"' in job for job in cub)
    cars = next(job for job in prepares if "dataset=cars196" in job)
    assert "/my/cub" not in cars and "/data/cars196" in cars


@pytest.mark.parametrize("config, message", [
    (["experiments=[vmf_mnsit]"], "config key 'experiments' names 'vmf_mnsit'; valid: coarse_to_fine_breeds"),
    (["experiments=[vmf_mnist]", "datasets={cub200: {root: /x}}"],
     "config key 'datasets.cub200' matches no dataset of the chosen experiments"),
])
def test_paper_bad_config(tmp_path, config, message):
    proc = paper(tmp_path, "-n", "--config", *config)
    assert proc.returncode != 0 and f"fgbench: config error: {message}" in proc.stderr

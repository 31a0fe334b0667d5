"""The workflow on a real (single-host, throwaway) SLURM cluster through workflow/profiles/slurm:
a tiny run, a failed job and the rerun that finishes only what is missing, and the sbatch error of
a profile without a partition on a cluster that needs one.

The cluster (tests/slurm_cluster.py) has no accounting and no default partition, so the profile
is used the way such a site must use it: a small site profile on top of it names the partition
and `slurm-status-command: squeue` (the two placeholders the profile documents)."""

import math
import re
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from conftest import FASHION_DEBIAN, REPO
from slurm_cluster import PARTITIONS, SlurmCluster, missing_reason
from test_workflow import job_counts, tiny_config, write_config

pytestmark = pytest.mark.workflow

PROFILE = REPO / "workflow/profiles/slurm"
METHODS = {"coarse_to_fine": "supervised_coarse", "open_set": "triplet"}
PROTOCOLS = ("retrieval",)
# Test-only --slurm-init-seconds-before-status-checks: the plugin (2.8.0) checks job status this
# long (default 40 s) after a submission or a finished job, then adds 10 s per check that finds
# nothing finished. 1 s keeps the tests quick; MinJobAge=300 on the test cluster stays above the
# 3x this that squeue mode needs.
FAST_STATUS = 1
HANG_GUARD_S = 900  # Snakemake waiting forever (the sacct trap) fails the test instead of hanging it


@pytest.fixture(scope="module")
def slurm():
    """The test cluster, started once for this module and torn down after it (also on failure)."""
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    with SlurmCluster() as cluster:
        yield cluster


def slurm_config(fashion_root, **changes):
    """Fashion-MNIST subset, one method per setting, one epoch, one protocol; no combinations,
    t-SNE plots or few-shot views, so every SLURM job is one of prepare, train, embed, evaluate
    and each stage of the DAG is one wave of jobs on the 2-CPU test node."""
    cfg = tiny_config(fashion_root)
    cfg["benchmark"] = {"fashion_mnist": {setting: [method] for setting, method in METHODS.items()}}
    cfg["combinations"] = []
    cfg["protocols"] = {name: cfg["protocols"][name] for name in PROTOCOLS}
    cfg["report"] = {"tsne": False}
    cfg["embed"] = {"views": 1}  # augmented views serve few-shot supports only
    cfg.update(changes)
    return cfg


def site_profile(path, partition=PARTITIONS[0]):
    """What a site without accounting puts on top of workflow/profiles/slurm: squeue for job
    status and, when given, its partition. default-resources is replaced as a whole by a later
    profile, so the project profile's values are carried over."""
    base = yaml.safe_load((PROFILE / "config.yaml").read_text())
    resources = dict(base["default-resources"])
    if partition:
        resources["slurm_partition"] = partition
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump({
        "default-resources": resources,
        "slurm-status-command": "squeue",
        "slurm-init-seconds-before-status-checks": FAST_STATUS,
    }))
    return path


def snakemake(cluster, workdir, site, *args):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--profile", str(PROFILE), "--profile", str(site), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cluster.env(), timeout=HANG_GUARD_S)
    proc.output = proc.stdout + proc.stderr
    return proc


def failure(proc) -> str:
    return f"snakemake exited {proc.returncode}:\n{proc.output[-8000:]}"


def slurm_jobs(cluster, output: str) -> dict:
    """{SLURM job id: (state, comment)} of this Snakemake run's jobs, as squeue lists them (the
    plugin names every job of a run after its run ID and comments it rule_<rule>_wildcards_...)."""
    run_id = re.search(r"SLURM run ID: (\S+)", output)
    if run_id is None:  # Snakemake stopped before the executor started: no jobs
        return {}
    run_id = run_id.group(1)
    listing = cluster.run("squeue", "--states=all", "--noheader", "--format=%i|%T|%k", f"--name={run_id}").stdout
    return {job: (state, comment) for job, state, comment in (line.split("|", 2) for line in listing.splitlines())}


def run_dir(setting, what="models"):
    return f"results/{what}/fashion_mnist/{setting}/{METHODS[setting]}/seed0"


def test_profile_without_partition_surfaces_the_sbatch_error(slurm, real_fashion, tmp_path):
    """The cluster has no default partition and the profile names none: sbatch refuses the job,
    and Snakemake says why and fails (the plugin reports the error instead of swallowing it)."""
    write_config(tmp_path / "run", slurm_config(real_fashion))
    proc = snakemake(slurm, tmp_path / "run", site_profile(tmp_path / "site", partition=None))
    assert proc.returncode != 0, failure(proc)
    assert "No partition specified or system default partition" in proc.output, failure(proc)
    assert "SLURM sbatch failed" in proc.output and "Error in rule prepare" in proc.output, failure(proc)
    assert "SLURM run ID" in proc.output and slurm_jobs(slurm, proc.output) == {}  # nothing was queued
    assert not (tmp_path / "run/results/data").exists()


@pytest.fixture(scope="module")
def failed_run(slurm, tmp_path_factory):
    """The tiny workflow with one broken run: an absurd learning rate makes the triplet run's loss
    NaN in its first epoch, so `fgbench train` exits non-zero inside its SLURM job (a real
    runtime failure). Returns the run and a snapshot of the outputs taken right after it, so the
    tests below do not depend on each other's order.

    The successful run of the tiny workflow is the rerun in test_rerun_finishes_only_what_is_missing,
    checked as a fresh run would be (exit 0, its jobs in SLURM, the results table); this first run
    already puts prepare, train, embed and evaluate through SLURM. A separate from-scratch run
    would add about 2.5 min on a 2-core machine without exercising anything new: every stage of
    the DAG costs 30-60 s here (the plugin's status checks back off by 10 s per check that finds
    nothing finished, and each job starts Snakemake twice)."""
    if not all((FASHION_DEBIAN / f).exists() for f in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")):
        pytest.skip("Fashion-MNIST not on disk: `make setup` installs Debian's dataset-fashion-mnist")
    root = tmp_path_factory.mktemp("slurm")
    broken = slurm_config(FASHION_DEBIAN)
    broken["methods"]["triplet"].setdefault("train", {})["lr"] = 1e30
    workdir = write_config(root / "run", broken)
    site = site_profile(root / "site")
    # --retries 0: the profile retries a failed job once, and a NaN fails the same way again.
    proc = snakemake(slurm, workdir, site, "--retries", "0")
    finished = [workdir / "results/data/fashion_mnist/data.npz", workdir / run_dir("coarse_to_fine") / "model.pt",
                *(workdir / run_dir("coarse_to_fine", "metrics") / f"{p}.json" for p in PROTOCOLS)]
    return SimpleNamespace(
        workdir=workdir, site=site, proc=proc, jobs=slurm_jobs(slurm, proc.output), finished=finished,
        mtimes={path: path.stat().st_mtime_ns for path in finished if path.exists()},
        slurm_logs=sorted((workdir / "results/logs/slurm").rglob("*.log")),
        broken_model=(workdir / run_dir("open_set") / "model.pt").exists(),
        summary=(workdir / "results/tables/summary.csv").exists(),
    )


def test_failed_job_is_reported_with_its_slurm_status_and_logs(failed_run):
    proc = failed_run.proc
    assert proc.returncode != 0, failure(proc)
    # the failed job: its rule, its run, SLURM's verdict, the rule's log and SLURM's job log
    assert "Error in rule train:" in proc.output, failure(proc)
    error = proc.output[proc.output.index("Error in rule train:"):]
    assert "results/models/fashion_mnist/open_set/triplet/seed0/model.pt" in error[:3000], failure(proc)
    assert "SLURM status is: 'FAILED'" in error[:3000], failure(proc)
    assert "results/logs/train/fashion_mnist/open_set/triplet/seed0.log" in error[:3000], failure(proc)
    # show-failed-logs prints the rule's log: fgbench's own reason
    assert "fgbench: error: the loss became nan at epoch 0" in proc.output, failure(proc)
    # SLURM's log of the failed job is kept (those of successful jobs are deleted) and named
    assert len(failed_run.slurm_logs) == 1, failed_run.slurm_logs
    log = failed_run.slurm_logs[0]
    assert log.parent.name == "fashion_mnist_open_set_triplet_0" and log.parent.parent.name == "rule_train"
    assert str(log) in error[:3000], failure(proc)
    train = sorted(state for state, comment in failed_run.jobs.values() if comment.startswith("rule_train"))
    assert train == ["COMPLETED", "FAILED"], failed_run.jobs
    assert "Exiting because a job execution failed" in proc.output


def test_keep_going_finishes_the_other_run(failed_run):
    assert all(path in failed_run.mtimes for path in failed_run.finished), failed_run.mtimes
    assert not failed_run.broken_model and not failed_run.summary  # no table from half the runs
    # every job that could run did, as a SLURM job, and completed (but the failed one)
    states = Counter(state for state, _ in failed_run.jobs.values())
    assert states == {"COMPLETED": 4, "FAILED": 1}, failed_run.jobs  # prepare, 2 train, embed, evaluate


def test_rerun_finishes_only_what_is_missing(slurm, failed_run):
    """Fix the config, run the same command again: only the failed run and what depends on it
    runs; the tiny workflow then completes on SLURM with both methods in its table."""
    workdir = failed_run.workdir
    write_config(workdir, slurm_config(FASHION_DEBIAN))
    proc = snakemake(slurm, workdir, failed_run.site)
    assert proc.returncode == 0, failure(proc)
    counts = job_counts(proc.output)
    assert {rule: counts.get(rule) for rule in ("prepare", "train", "embed", "evaluate", "aggregate")} == \
        {"prepare": None, "train": 1, "embed": 1, "evaluate": len(PROTOCOLS), "aggregate": 1}, failure(proc)
    assert {path: path.stat().st_mtime_ns for path in failed_run.finished} == failed_run.mtimes

    # Every job but the workflow's localrules ran as a SLURM job, and completed; all of them
    # belong to the run that had failed.
    jobs = slurm_jobs(slurm, proc.output)
    submitted = Counter(re.match(r"rule_([a-z_]+?)(_wildcards|$)", comment).group(1) for _, comment in jobs.values())
    assert submitted == Counter(re.findall(r"^rule (\w+):$", proc.output, re.M)), (jobs, failure(proc))
    assert submitted == {"train": 1, "embed": 1, "evaluate": len(PROTOCOLS)}, jobs
    assert all("_open_set_triplet_" in comment for _, comment in jobs.values()), jobs
    assert {state for state, _ in jobs.values()} == {"COMPLETED"}, jobs
    # aggregate, tables and plot ran in this process, not on the cluster
    assert re.search(r"^localrule aggregate:$", proc.output, re.M), failure(proc)

    summary = pd.read_csv(workdir / "results/tables/summary.csv")
    assert set(zip(summary["setting"], summary["method"])) == set(METHODS.items()), summary
    assert set(summary["protocol"]) == set(PROTOCOLS)
    assert summary["mean"].map(math.isfinite).all() and summary["mean"].between(0, 1).all(), summary
    assert (summary["n_seeds"] == 1).all()
    # every configured layer is evaluated (config.yaml: embed_layer)
    assert set(zip(summary["method"], summary["layer"])) == \
        {("supervised_coarse", "backbone"), ("supervised_coarse", "logits"), ("triplet", "head")}, summary
    # 30 test images per class: recall@1 of a trained embedding is well above chance (20% on the
    # 5 unseen classes of open_set, 10% on the 10 fine classes of coarse_to_fine)
    recall = summary.query("metric == 'recall@1'").groupby("method")["mean"].max()
    assert (recall > 0.3).all() and len(recall) == 2, summary

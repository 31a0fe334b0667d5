"""How long `snakemake -n` takes on the union of the paper configs (workflow/paper.smk).

Target: at least 1,000 jobs, dry run in at most 10 s. The dry run of the smallest experiment
alone is the reference, in the same process: it is almost all start-up (Python, Snakemake, the
config check importing torch), so the difference over the job count is the cost of each job.
Runs in a fresh temporary directory, so no existing output changes the DAG.

    .venv/bin/python benchmarks/dag.py [--repeats 3]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "workflow" / "paper.smk"
TARGET_SECONDS, TARGET_JOBS = 10.0, 1000


def dry_run(workdir: Path, *config: str) -> tuple[float, int]:
    """(wall seconds, number of jobs) of one `snakemake -n`, printing every job as users see it."""
    command = [sys.executable, "-m", "snakemake", "-s", str(PAPER), "-d", str(workdir), "-n"]
    if config:
        command += ["--config", *config]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"snakemake -n failed:\n{proc.stderr[-3000:]}")
    return seconds, int(re.findall(r"^total\s+(\d+)$", proc.stdout, re.MULTILINE)[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="dry runs of each; the fastest counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        union = min(dry_run(Path(tmp)) for _ in range(args.repeats))
        single = min(dry_run(Path(tmp), "experiments=[vmf_retrieval_sop]") for _ in range(args.repeats))
    per_job_ms = 1000 * (union[0] - single[0]) / (union[1] - single[1])
    print(f"union of workflow/experiments: {union[1]} jobs, snakemake -n {union[0]:.2f} s "
          f"(target: >= {TARGET_JOBS} jobs in <= {TARGET_SECONDS:.0f} s)")
    print(f"reference, one experiment:     {single[1]} jobs, snakemake -n {single[0]:.2f} s (start-up)")
    print(f"per job: {per_job_ms:.2f} ms; union / reference time: {union[0] / single[0]:.2f}")
    ok = union[1] >= TARGET_JOBS and union[0] <= TARGET_SECONDS
    print("OK" if ok else "MISSED THE TARGET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

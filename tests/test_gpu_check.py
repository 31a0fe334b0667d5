"""benchmarks/gpu_check.sh --dry: the GPU check end to end on the CPU at tiny sizes, the CUDA-only
parts skipped and saying so, every stage in the one table."""

import os
import subprocess
import sys

from conftest import REPO


def test_gpu_check_dry_runs_end_to_end_on_the_cpu():
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh"), "--dry"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "CUDA tests: skipped (--dry: the CUDA tests need a GPU)" in out
    table = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    rows = {(what.strip(), variant.strip()): figure.strip() for what, variant, figure, _ in table[1:]}
    for precision in ("fp32", "bf16", "bf16 + channels-last"):
        assert rows[("resnet10 raw fwd+bwd", precision)].endswith(" img/s")
    for method in ("supervised_coarse", "ancor"):
        for variant in ("files, batch_augment off", "files, batch_augment on"):
            assert float(rows[(f"loop {method}", variant)].split()[0]) > 0
        store = rows[(f"loop {method}", "store: resized, batch_augment on")]
        assert store == "skipped" or store.endswith(" img/s")
    assert rows[("few-shot solver", "all-way 12 classes x 64-d")].endswith(" ms/episode")


def test_gpu_check_refuses_a_bad_argument():
    done = subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh"), "--fast"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage: benchmarks/gpu_check.sh [--dry]" in done.stderr

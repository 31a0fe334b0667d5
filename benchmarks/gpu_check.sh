#!/usr/bin/env bash
# The GPU check: on one CUDA machine with torch, torchvision, numpy, pandas, scikit-learn,
# matplotlib and PyYAML (no package index needed), under 8 minutes:
#   1. installs fgbench's other needs from the wheels in .gpu-wheels/ (`make gpu-wheels` fetches
#      them, on a machine with an index, for the GPU machine's Python: GPU_PYTHON=3.12 by default);
#   2. runs the tests that need CUDA (pytest -m cuda);
#   3. runs benchmarks/gpu_check.py: ResNet-50 raw img/s (fp32, bf16, bf16 + channels-last),
#      fgbench's training loop img/s (supervised_coarse, ANCOR; file path and store path), the
#      few-shot solver at the entity30 all-way shape; one table at the end.
#
#   benchmarks/gpu_check.sh          # on the GPU machine, from a checkout of fgbench
#   benchmarks/gpu_check.sh --dry    # anywhere: the same steps on the CPU at tiny sizes, the
#                                    # CUDA-only parts skipped, saying so
# PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
DRY=()
case "${1:-}" in
  --dry) DRY=(--dry) ;;
  "") ;;
  *) echo "usage: benchmarks/gpu_check.sh [--dry]" >&2; exit 2 ;;
esac

# fgbench's needs beyond the machine's own packages, as wheel-name:module; the same list as the
# Makefile's gpu-wheels target
NEEDS="faiss_cpu:faiss pytorch_metric_learning:pytorch_metric_learning adamp:adamp tqdm:tqdm pytest:pytest pluggy:pluggy iniconfig:iniconfig"
missing=()
for need in $NEEDS; do
  "$PY" -c "import ${need#*:}" 2>/dev/null || missing+=("${need%%:*}")
done
if [ ${#missing[@]} -gt 0 ]; then
  SITE=${TMPDIR:-/tmp}/fgbench-gpu-site
  wheels=()
  for name in "${missing[@]}"; do
    found=$(ls .gpu-wheels/"$name"-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$found" ]; then
      echo "gpu_check: $name is not installed and .gpu-wheels/ holds no wheel of it;" \
           "run 'make gpu-wheels' on a machine with a package index and bring .gpu-wheels/ along" >&2
      exit 1
    fi
    wheels+=("$found")
  done
  echo "installing from .gpu-wheels into $SITE: ${missing[*]}"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "${wheels[@]}"
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$REPO/pkg${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

started=$(date +%s)
if [ ${#DRY[@]} -gt 0 ]; then
  tests="skipped (--dry: the CUDA tests need a GPU)"
  echo "CUDA tests: $tests"
else
  # the test files that hold CUDA tests (collecting them all would import Snakemake)
  files=$(grep -l "needs a CUDA GPU\|needs two CUDA GPUs" tests/test_*.py)
  set +e
  "$PY" -m pytest -q -m cuda -rs -p no:cacheprovider $files 2>&1 | tee "${TMPDIR:-/tmp}/gpu_check_tests.log"
  status=${PIPESTATUS[0]}
  set -e
  tests=$(tail -n 1 "${TMPDIR:-/tmp}/gpu_check_tests.log" | tr -d '=' | sed 's/^ *//; s/ *$//')
  [ "$status" -eq 0 ] || tests="FAILED: $tests"
fi
"$PY" benchmarks/gpu_check.py "${DRY[@]}" --tests "$tests"
echo "gpu_check: $(( $(date +%s) - started )) s"

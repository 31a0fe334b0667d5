#!/usr/bin/env bash
# Snakemake runs this once in the conda env it has just created from fgbench.yaml: it installs
# fgbench itself (the rules call `fgbench`), editable, so the env follows this checkout. Its
# dependencies are in fgbench.yaml. FGBENCH_ROOT (this repository) is set by workflow/rules/common.smk.
set -euo pipefail
python -m pip install --no-deps --no-build-isolation -e "${FGBENCH_ROOT:?FGBENCH_ROOT is set by the Snakefile; run through snakemake}"

# Two entry points (README): `make run` (default benchmark) and `make test` (the test suite).
VENV  ?= .venv
PY    := $(VENV)/bin/python
CORES ?= 2
# The rules call `fgbench`, which lives in the virtual environment.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup data test-deps run report test clean gpu-wheels

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Fashion-MNIST from Debian's package when offline; without it, `fgbench prepare` downloads it.
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -q && apt-get install -y -q dataset-fashion-mnist) \
		|| echo "dataset-fashion-mnist not installable: fgbench prepare will download Fashion-MNIST"; \
	fi

# What the tests need from Debian besides Fashion-MNIST: a single-host SLURM cluster (the SLURM
# tests start its daemons themselves) and Chromium (the HTML report test). Without root or apt the
# tests that need them skip, saying why.
test-deps:
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    ! (command -v slurmctld && command -v munged && command -v chromium) >/dev/null; then \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			slurmctld slurmd slurm-client munge chromium) \
		|| echo "slurm or chromium not installable: their tests will skip"; \
	fi

# A killed run leaves Snakemake's lock behind: lift it first, unless a Snakemake still runs here.
# The workflow profile (profiles/default) loads by itself.
run: setup
	$(PY) -m fgbench.unlock
	snakemake --cores $(CORES)
	snakemake --cores $(CORES) --report results/report.html
	@echo "Results: results/tables/summary.md and the papers' tables results/tables/{coarse_to_fine,retrieval,closed_set}.md; report: results/report.html"

# Two pytest-xdist workers, one test file each at a time (files share fixtures and clusters):
# the suite's half is waiting on Snakemake and subprocesses, so 2 cores take both.
TEST_WORKERS ?= 2
test: setup test-deps
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf results .snakemake

# Wheels of what benchmarks/gpu_check.sh needs beyond torch, torchvision, numpy, pandas,
# scikit-learn, matplotlib and PyYAML, for a GPU machine without a package index (its Python:
# GPU_PYTHON). faiss-cpu, not faiss-gpu: the check does not search at scale, and faiss-gpu's
# wheel alone is several times the 19 MB these take. adamp has no wheel on PyPI: built here.
GPU_PYTHON ?= 3.12
GPU_WHEELS := faiss-cpu pytorch-metric-learning tqdm pytest pluggy iniconfig
gpu-wheels:
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .gpu-wheels $(GPU_WHEELS)
	$(PY) -m pip wheel --quiet --no-deps -w .gpu-wheels adamp
	@du -sh .gpu-wheels

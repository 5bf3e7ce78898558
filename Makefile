# make setup | run | test | test-slurm | report | bench -- see README.md.
VENV   ?= .venv
PY     := $(VENV)/bin/python
SMK    := $(VENV)/bin/snakemake
CORES  ?= 8
# The CPU wheel of torch lies on this project's machines; on a GPU box use
# e.g. `make setup TORCH="torch==2.13.0"` from the CUDA index of your choice.
TORCH  ?= torch==2.13.0

# The oldest torch pyproject.toml allows (its `torch>=` bound), which `make test-floor` tests on.
TORCH_FLOOR := $(shell sed -n 's/.*"torch>=\([0-9.]*\),.*/\1/p' pyproject.toml)

.PHONY: setup run test test-floor test-slurm report bench tensorboard clean

setup: $(VENV)/.installed

# Re-run when the pins change. kss 1.3.1 (pinned by expanda) builds with
# Cython and fails in pip's build isolation, so it goes in first without it.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel cython
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q --no-build-isolation kss==1.3.1
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

run: setup
	$(SMK) --cores $(CORES) results/eval_small.json

test: setup
	$(VENV)/bin/pytest -q

report: setup
	$(SMK) --cores $(CORES) report_all
	$(SMK) --report results/report.html report_all

# Throughput and quality per token against named peers; tables on stdout, JSON in results/bench/ (docs/performance.md).
bench: setup
	$(SMK) --cores $(CORES) results/corpus/vocab.txt
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_eval.py
	$(PY) benchmarks/bench_shards.py
	$(PY) benchmarks/bench_pipeline.py
	$(PY) benchmarks/bench_extract.py
	$(SMK) --cores $(CORES) results/shards/manifest.json
	$(PY) benchmarks/bench_quality.py

# Training curves of every model under results/train/ (train/valid loss, lr, tokens/s, grad norm, MFU).
tensorboard: setup
	$(VENV)/bin/tensorboard --logdir results/train --port 6006

clean:
	rm -rf results resources .snakemake

# The training and model tests on the oldest torch allowed, in a venv of its own (.venv-floor; on
# x86-64 PyPI's build of that torch is a CUDA one: ~3 GB to download, ~7 GB installed, runs on the CPU).
test-floor:
	$(MAKE) setup VENV=.venv-floor TORCH="torch==$(TORCH_FLOOR)"
	.venv-floor/bin/python -c "import torch; print('torch', torch.__version__)"
	.venv-floor/bin/pytest -q tests/test_train.py tests/test_model.py

# The real-SLURM test alone (needs root and Debian's slurmctld slurmd slurm-client munge).
test-slurm: setup
	$(VENV)/bin/pytest -q -m slurm tests/test_slurm.py

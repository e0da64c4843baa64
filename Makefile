# One-command set-up: `make run` (the main job) and `make test` (the test suite) each create
# .venv, install the CPU build of torch and arcfast with its test extra, then run.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel keeps a fresh install to seconds; the package metadata itself only asks torch>=2.4.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup run test bench build docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel pybind11
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[test]"
	touch $@

build: setup
	$(BIN)/python setup.py -q build_ext --inplace

run: setup
	$(BIN)/arcfast ttft

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python -m arcfast.bench

# docs/CLI.md, the flag-by-flag reference, from the parsers (tests/test_cli_docs.py checks it is current).
docs: setup
	$(BIN)/python -m arcfast.cli.docs --write

clean:
	rm -rf build $(VENV) arcfast/_core*.so *.egg-info

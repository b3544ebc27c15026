# `make demo` and `make test` work from a fresh clone: both install first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install data demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pin the CPU build first so no dependency pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,eval]"
	touch $(STAMP)

# Real data sets for tests, demo and benchmarks, into $PLAIT_DATA_DIR (see plait/eval/data_cache.py).
data: install
	$(PY) -m plait.eval.data_cache fetch

demo: install data
	$(PY) -m plait.train.demo

test: install data
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) bench/throughput.py --out bench/results/throughput_cpu.json

clean:
	rm -rf $(VENV) outputs

# Two entry points: `make demo` (the main job) and `make test`. Each creates or
# reuses .venv and installs the project into it (torch comes from the pinned wheel).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-slow lint bench bench-quick clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/worldflow demo

test: $(STAMP)
	$(VENV)/bin/ruff check worldflow envs agents benchmarks tests
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check worldflow envs agents benchmarks tests

bench: $(STAMP)
	$(VENV)/bin/worldflow bench

bench-quick: $(STAMP)
	$(VENV)/bin/worldflow bench quick=true

clean:
	rm -rf $(VENV) build *.egg-info

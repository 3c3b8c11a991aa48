# `make test` and `make demo` do all set-up on a fresh machine: they create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.py requirements/runtime.txt requirements/tests.txt
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[tests]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info

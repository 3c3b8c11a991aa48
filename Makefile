# `make test` and `make demo` do all set-up on a fresh machine: they create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.py requirements/runtime.txt requirements/tests.txt
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[tests]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# Generate the MUSE-format demo data (if absent), train the tiny PixelLM on the CPU, evaluate,
# write overlays and print gIoU/cIoU next to the trivial predictors (tools/misc/run_demo.py).
demo: $(STAMP)
	$(PY) tools/misc/run_demo.py

clean:
	rm -rf $(VENV) build *.egg-info

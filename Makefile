# `make test` and `make demo` do all set-up on a fresh machine: they create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo test-full-width test-web web-demo chromium clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.py requirements/runtime.txt requirements/tests.txt
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[tests]'
	touch $(STAMP)

install: $(STAMP)

WEB_STAMP := $(VENV)/.installed-web
$(WEB_STAMP): $(STAMP) requirements/web.txt
	$(PY) -m pip install -q -e '.[tests,web]'
	touch $(WEB_STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# The PixelLM-7B recipe at full width with 2 LLM layers: one bf16 training step and one generation
# on the CPU (about 11 GB of memory; tests/test_tools/test_full_width_smoke.py).
test-full-width: $(STAMP)
	$(PY) -m pytest -q -m full_width tests

# The offline demo (projects/pixellm_tiny_demo): generate the MUSE-format demo data (if absent),
# train the tiny PixelLM on the CPU, evaluate, write overlays and print gIoU/cIoU next to the
# trivial predictors.
demo: $(STAMP)
	$(PY) projects/pixellm_tiny_demo/tools/run_demo.py

# The browser test of the web demo: installs the `web` extra (Gradio, Playwright's Python driver)
# and Debian's chromium (no browser download), then runs the tests marked `web`.
test-web: $(WEB_STAMP) chromium
	$(PY) -m pytest -q -m web tests/test_web

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi; }

# The web demo on http://127.0.0.1:7860 with the checkpoint `make demo` trained.
web-demo: $(WEB_STAMP)
	@test -f work_dirs/pixellm_tiny_demo/last_checkpoint || { \
	  echo 'no demo checkpoint: run make demo first'; exit 1; }
	$(PY) demo/app.py projects/pixellm_tiny_demo/configs/pixellm_tiny_demo.py \
	  "$$(cat work_dirs/pixellm_tiny_demo/last_checkpoint)"

clean:
	rm -rf $(VENV) build *.egg-info

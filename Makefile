# Two commands do everything on a fresh machine with Python 3.11+:
#   make demo   - install the project in .venv, draw every model, train and evaluate a small
#                 one offline and draw it coloured by what trained (a few minutes on 2 cores)
#   make test   - install the test tools (Keras/torch references, Graphviz `dot`) and run every test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# tests run on every core (pytest-xdist); PYTEST_ARGS="-n 0" runs them in one process
PYTEST_ARGS ?= -n auto

.PHONY: demo test quick lint clean dot chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test,parity]'
	touch $@

dot:
	@command -v dot >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Graphviz (dot) with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null; \
	  else \
	    echo "Graphviz 'dot' is missing: install it (apt-get install graphviz / brew install graphviz)"; exit 1; \
	  fi; }

# a headless browser for the interactive HTML drawings' tests (tests/test_viz_html.py)
BROWSERS = chromium-headless-shell chromium chromium-browser google-chrome
chromium:
	@for b in $(BROWSERS); do command -v $$b >/dev/null 2>&1 && exit 0; done; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium-headless-shell with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell >/dev/null; \
	  else \
	    echo "no Chromium for the HTML drawings' browser tests: install it (apt-get install chromium-headless-shell / brew install chromium)"; exit 1; \
	  fi

DEMO_DIR ?= workdirs/demo

# the model and the policy of the run's last stage, from its config.json
RUN_POLICY = import json; c = json.load(open("$(DEMO_DIR)/config.json")); \
  s = [x.split() for x in c["stages"].split(";") if x.strip()]; \
  print(c["model"]["name"], s[-1][0] if s else c["policy"])

demo: $(VENV)/.installed dot
	$(BIN)/transfer-zoo models
	$(BIN)/transfer-zoo draw --all --depth 1 --out $(DEMO_DIR)/gallery
	$(BIN)/transfer-zoo train --config synthetic --workdir $(DEMO_DIR)
	$(BIN)/transfer-zoo evaluate --workdir $(DEMO_DIR)
	set -- $$($(BIN)/python -c '$(RUN_POLICY)') && \
	  $(BIN)/transfer-zoo draw --model $$1 --depth 1 --freeze $$2 --out $(DEMO_DIR)/$$1.trained.svg
	@echo "drawings: $(DEMO_DIR)/gallery/index.html (every model, SVGs and interactive pages) and the trained model in $(DEMO_DIR)"

test: $(VENV)/.installed-test dot chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

quick: $(VENV)/.installed-test dot chromium
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check zoo train viz scripts tests

clean:
	rm -rf $(VENV) .pytest_cache

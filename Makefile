# Two commands do everything on a fresh machine with Python 3.11+:
#   make demo   - install the project in .venv and run the main job
#   make test   - install the test tools (Keras/torch references, Graphviz `dot`) and run every test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# tests run on every core (pytest-xdist); PYTEST_ARGS="-n 0" runs them in one process
PYTEST_ARGS ?= -n auto

.PHONY: demo test quick lint clean

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

DEMO_DIR ?= workdirs/demo

demo: $(VENV)/.installed
	$(BIN)/python -m scripts.models
	$(BIN)/python -m scripts.train --config train/configs/synthetic.py --workdir $(DEMO_DIR)
	$(BIN)/python -m scripts.evaluate --workdir $(DEMO_DIR)

test: $(VENV)/.installed-test dot
	$(BIN)/python -m pytest $(PYTEST_ARGS)

quick: $(VENV)/.installed-test dot
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check zoo train viz scripts tests

clean:
	rm -rf $(VENV) .pytest_cache

# llmpath: `make tour` and `make test` are all a learner needs on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch, installed before the project so that pip never pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0
PRESET ?= small
PYTEST_ARGS ?=
TOUR_ARGS ?=

.PHONY: tour test test-fast install dev bench docs-figures docs-notebooks clean help chromium

help:
	@echo "make tour    create .venv, install, run every tutorial (preset $(PRESET)), write runs/tour/report.*"
	@echo "make test    same venv plus dev deps, run pytest (every test, slow ones too)"
	@echo "make test-fast  the tests not marked slow: the edit loop"
	@echo "make docs-figures copy the tutorials' figures from finished runs into docs/tutorials/figures/"
	@echo "make docs-notebooks run notebooks/ (tiny preset) and write the copies with outputs to docs/notebooks/"
	@echo "make install create .venv and install llmpath"
	@echo "make bench   run the speed benchmarks in benchmarks/"
	@echo "make clean   remove .venv, runs/ and caches"

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first; skipped when the venv already has torch >= 2.2 (a GPU build you installed stays).
$(VENV)/.torch: | $(BIN)/python
	@if $(BIN)/python -c "import sys, torch; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(v < (2, 2))" 2>/dev/null; then \
		echo "torch >= 2.2 already in $(VENV): skipping $(TORCH_SPEC)"; \
	else \
		$(BIN)/python -m pip install "$(TORCH_SPEC)"; \
	fi
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(BIN)/python -m pip install -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -e ".[dev]"
	@touch $@

install: $(VENV)/.installed

dev: $(VENV)/.installed-dev

tour: $(VENV)/.installed
	$(BIN)/llmpath tour --yes --preset=$(PRESET) $(TOUR_ARGS)

test: $(VENV)/.installed-dev chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# the package never writes into the repository; this copies chosen figures of finished runs (see docs/figures.py)
docs-figures: $(VENV)/.installed
	$(BIN)/python docs/figures.py

# notebooks/ is committed without outputs; this writes executed copies (tiny preset) that GitHub renders (see docs/notebooks.py)
docs-notebooks: $(VENV)/.installed-dev
	$(BIN)/python docs/notebooks.py

# The tour report's browser test needs Debian's chromium; install it when we can (root + apt).
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for the report's browser test"; \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "note: chromium could not be installed; the browser test will be skipped"; \
	else echo "note: no chromium and no root apt-get here; the report's browser test will be skipped"; fi

bench: $(VENV)/.installed-dev
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis build dist src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# llmpath: `make tour` and `make test` are all a learner needs on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch, installed before the project so that pip never pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0
# Every other package at the exact version the documented numbers were measured with (constraints.txt,
# written by `make lock`). To upgrade: `make lock` (a fresh venv, the newest versions pyproject.toml allows),
# then `make test` and `make tour`, update the numbers in the docs where they moved, commit constraints.txt.
# `make tour CONSTRAINTS=` installs without it (e.g. on Python 3.10, which the pins do not support).
CONSTRAINTS ?= constraints.txt
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
PRESET ?= small
PYTEST_ARGS ?=
TOUR_ARGS ?=

.PHONY: tour test test-fast install dev bench docs-figures docs-notebooks lock clean help chromium

help:
	@echo "make tour    create .venv, install, run every tutorial (preset $(PRESET)), write runs/tour/report.*"
	@echo "make test    same venv plus dev deps, run pytest (every test, slow ones too)"
	@echo "make test-fast  the tests not marked slow: the edit loop"
	@echo "make docs-figures copy the tutorials' figures from finished runs into docs/tutorials/figures/"
	@echo "make docs-notebooks run notebooks/ (tiny preset) and write the copies with outputs to docs/notebooks/"
	@echo "make lock    re-pin constraints.txt to the newest versions pyproject.toml allows (then test and commit)"
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
		$(BIN)/python -m pip install "$(TORCH_SPEC)" $(PIP_C); \
	fi
	@touch $@

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) $(VENV)/.torch
	$(BIN)/python -m pip install -e . $(PIP_C)
	@touch $@

$(VENV)/.installed-dev: pyproject.toml $(CONSTRAINTS) $(VENV)/.installed
	$(BIN)/python -m pip install -e ".[dev]" $(PIP_C)
	@touch $@

install: $(VENV)/.installed

dev: $(VENV)/.installed-dev

tour: $(VENV)/.installed
	$(BIN)/llmpath tour --yes --preset=$(PRESET) $(TOUR_ARGS)

# -n auto: one pytest worker per core (pytest-xdist); every test keeps to one torch thread
test: $(VENV)/.installed-dev chromium
	$(BIN)/python -m pytest -n auto $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n auto -m "not slow" $(PYTEST_ARGS)

# the package never writes into the repository; this copies chosen figures of finished runs (see docs/figures.py)
docs-figures: $(VENV)/.installed
	$(BIN)/python docs/figures.py

# notebooks/ is committed without outputs; this writes executed copies (tiny preset) that GitHub renders (see docs/notebooks.py)
docs-notebooks: $(VENV)/.installed-dev
	$(BIN)/python docs/notebooks.py

# constraints.txt from a throwaway venv: torch first (TORCH_SPEC), then the project and its dev extra with no
# constraints, so pip picks the newest versions pyproject.toml allows; everything but llmpath and torch is pinned.
lock:
	@set -e; tmp=$$(mktemp -d); \
	$(PY) -m venv $$tmp/venv; \
	$$tmp/venv/bin/python -m pip install -q "$(TORCH_SPEC)"; \
	$$tmp/venv/bin/python -m pip install -q -e ".[dev]"; \
	{ echo "# Exact versions of everything llmpath installs, but torch (pinned by TORCH_SPEC in the Makefile)."; \
	  echo "# The Makefile installs with -c constraints.txt; regenerate with \`make lock\` (see the Makefile)."; \
	  echo "# Resolved on Python $$($$tmp/venv/bin/python -c 'import sys; print(*sys.version_info[:2], sep=".")') ($$(uname -s) $$(uname -m))."; \
	  $$tmp/venv/bin/python -m pip freeze --exclude-editable --exclude torch; } > constraints.txt.new; \
	rm -rf $$tmp; mv constraints.txt.new constraints.txt; \
	echo "constraints.txt: $$(grep -vc '^#' constraints.txt) packages pinned; now run make test and make tour, and commit it"

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

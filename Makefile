# One-command entry points. Every install step lives here (and in setup.cfg).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat setup.cfg | cksum | cut -d' ' -f1)
WORKDIR ?= workdirs/demo
PYTEST_ARGS ?=
# absl INFO logs (orbax, tfds) drown the demo's own progress lines; DEMO_FLAGS= shows them.
DEMO_FLAGS ?= --verbosity=-1

.PHONY: install test test-fast lint format demo clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test,lint]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff format --check codellm_jax configs experiments tests
	$(VENV)/bin/ruff check codellm_jax configs experiments tests

format: $(STAMP)
	$(VENV)/bin/ruff format codellm_jax configs experiments tests
	$(VENV)/bin/ruff check --fix codellm_jax configs experiments tests

demo: $(STAMP)
	$(PY) -m codellm_jax.demo --workdir=$(WORKDIR) $(DEMO_FLAGS)

clean:
	rm -rf $(VENV) workdirs

# Every target installs what it needs into .venv first (exact versions from requirements.lock).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha1sum | cut -c1-10)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install contracts contracts-check models demo test bench lock clean

install: $(INSTALLED)

$(INSTALLED): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock 2> >(grep -v "is ignored: it is neither" >&2)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . 2> >(grep -v "is ignored: it is neither" >&2)
	@rm -f $(VENV)/.installed-* && touch $@

## Regenerate the Python contracts from proto/ (never edit them by hand).
contracts: install
	$(PY) -m services.common.contracts.generate

contracts-check: install
	$(PY) -m services.common.contracts.generate --check

## Build the model versions Triton serves (left alone if one exists).
models: install
	$(PY) -m services.trainer.build_untrained

## The local stack on sample listings: ends with `classified N/N listings`.
demo: models
	$(PY) -m services.localstack.demo

## The whole test suite, on the real broker, the real Triton (CPU) and the real PostgreSQL.
test: models
	$(PY) -m pytest $(PYTEST_ARGS)

## Pipeline benchmark: prints one line of JSON last.
bench: models
	$(PY) -m services.localstack.bench_pipeline

## Re-pin requirements.lock from what is installed in .venv.
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v "^-e" > requirements.lock.new && mv requirements.lock.new requirements.lock

clean:
	rm -rf .run

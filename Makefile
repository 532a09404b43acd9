# Every target installs what it needs into .venv first (exact versions from requirements.lock).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha1sum | cut -c1-10)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install contracts contracts-check prometheus-rule models train ablation demo up export-corrections evaluate test browser promtool bench bench-plumbing bench-preprocess bench-scale bench-watch bench-gpu gpu-carry gpu-carry-ort chaos lock clean

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

## Write the alerts (deploy/prometheus/alerts.yml) as the Prometheus Operator's PrometheusRule, after changing them.
prometheus-rule: install
	$(PY) deploy/prometheus/prometheus_rule.py

## Train the served models on the real clothing photos, fit their fusion, publish to triton_models/ (once; cached).
models: install
	$(PY) -m services.trainer.real_models $(MODELS_ARGS)

## Fine-tune on your own catalogue (one folder per category): make train CATALOGUE=path [TRAIN_ARGS=...]
train: install
	$(PY) -m services.trainer $(CATALOGUE) $(TRAIN_ARGS)

## The research's comparison on a catalogue: make ablation CATALOGUE=path [TRAIN_ARGS=...]
ablation: install
	$(PY) -m services.trainer.ablation $(CATALOGUE) $(TRAIN_ARGS)

## The local stack on real validation photos: ends with `classified N/N listings`.
demo: models
	$(PY) -m services.drivers.demo

## The local stack, kept running until Ctrl-C: prints where everything is and what to try.
up: models
	$(PY) -m services.drivers.up

## Operators' corrections as a catalogue make train takes: make export-corrections OUT=dir [BASE=catalogue]
export-corrections: install
	$(PY) -m services.tools.export_corrections $(or $(OUT),.run/corrected) $(if $(BASE),--base $(BASE)) $(EXPORT_ARGS)

## Every photo of DATA (folder per category; default the validation split) through the pipeline: JSON line last.
evaluate: models
	$(PY) -m services.drivers.evaluate $(if $(DATA),--data $(DATA)) $(EVALUATE_ARGS)

## The whole test suite, on the real broker, the real Triton (CPU), the real PostgreSQL and headless Chromium.
test: models browser promtool
	$(PY) -m pytest $(PYTEST_ARGS)

## Debian's chromium and chromium-driver for the console's browser tests (installed when missing and we are root).
browser:
	@command -v chromedriver >/dev/null && command -v chromium >/dev/null || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }; \
	    else echo "chromium/chromedriver missing and not root: the browser tests will say so and be skipped"; fi; }

## Prometheus's promtool for the alert rules' tests: taken out of Debian's prometheus package into .venv/bin (the
## package is not installed, so no Prometheus server is set up or started).
promtool: install
	@test -x $(VENV)/bin/promtool || command -v promtool >/dev/null || { \
	  dir=$$(mktemp -d) && cd $$dir && \
	  { apt-get download prometheus >/dev/null 2>&1 || \
	    { [ "$$(id -u)" = 0 ] && apt-get update -q >/dev/null && apt-get download prometheus >/dev/null; }; } && \
	  dpkg-deb -x prometheus_*.deb root && cp root/usr/bin/promtool $(CURDIR)/$(VENV)/bin/promtool; \
	  rm -rf $$dir; test -x $(CURDIR)/$(VENV)/bin/promtool || \
	    echo "promtool could not be fetched: the alert rules' tests will say so and be skipped"; }

## Pipeline benchmark (production-size models in .run/bench_models): prints one line of JSON last.
bench: install
	$(PY) -m services.drivers.benchmarks.pipeline

## What the system itself costs per listing (stand-in models next to free, PostgreSQL): prints one line of JSON last.
bench-plumbing: models
	$(PY) -m services.drivers.benchmarks.plumbing $(BENCH_ARGS)

## Preprocessing against the straightforward Pillow path: prints one line of JSON last.
bench-preprocess: install
	$(PY) -m services.drivers.benchmarks.preprocess

## One and two preprocessing workers in one consumer group: prints one line of JSON last.
bench-scale: models
	$(PY) -m services.drivers.benchmarks.scale

## Many watch streams against one result replica, and GetClassification latency meanwhile: JSON line last.
bench-watch: models
	$(PY) -m services.drivers.benchmarks.watch

## On a machine with an NVIDIA GPU and CUDA PyTorch with torchvision (its own python3): Triton on the GPU, the CPU path
## against the GPU decode path at Triton's door and through the whole pipeline (Kafka, the three services), the CNNs
## with and without Triton; JSON line last. `make gpu-carry` packs .gpu/ first (BENCH_ARGS=--cpu-twins rehearses it
## on a machine without a GPU); BENCH_ARGS=--engine=ort-cuda runs the CNNs on ONNX Runtime's CUDA provider in FP16.
bench-gpu:
	python3 -m services.drivers.benchmarks.gpu $(BENCH_ARGS)

## What bench-gpu (.gpu/) or, with GPU_CARRY_ARGS=--training, services.trainer.full_size (.gpu-train/) needs there.
gpu-carry: models
	$(PY) -m services.drivers.benchmarks.gpu_host.carry $(GPU_CARRY_ARGS)

## onnxruntime-gpu in parts of one device call each (.gpu-ort/p00, p01), for BENCH_ARGS=--engine=ort-cuda there.
gpu-carry-ort: install
	$(PY) -m services.drivers.benchmarks.gpu_host.ort_gpu

## Fault injection on the local stack: prints one line of JSON last (lost and duplicated must be 0).
chaos: models
	$(PY) -m services.drivers.chaos.scenarios

## Re-pin requirements.lock from what is installed in .venv.
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v "^-e" > requirements.lock.new && mv requirements.lock.new requirements.lock

clean:
	rm -rf .run

# The two commands of the README: `make smoke` and `make test`. Each does its own set-up.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
UV_VERSION := 0.13.8
SMOKE_DIR ?= build/smoke
PYTEST_ARGS ?=
export UV_PYTHON_DOWNLOADS := never
export PATH := $(CURDIR)/.venv/bin:$(HOME)/.local/bin:$(PATH)
# Everything after download runs offline; the smoke profile's downloads are local folders.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: setup smoke test lint typecheck dvc-remote fixture hyperparameters published-metrics clean-smoke

setup: .venv/.synced

.venv/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null || python3 -m pip install --quiet --user "uv==$(UV_VERSION)"
	uv sync --frozen --compile-bytecode  # compile .pyc now, not inside the first timed stages
	@touch $@

## Run the whole DVC pipeline offline on the bundled fixture (tiny models) in $(SMOKE_DIR).
smoke: setup
	python -m retrievers.profile smoke $(SMOKE_DIR)
	@start=$$(date +%s); cd $(SMOKE_DIR) && $(OFFLINE) dvc repro; \
	  echo "pipeline: $$(( $$(date +%s) - start )) s in $(SMOKE_DIR)"

## Run the tests (unit, data, pipeline and behaviour).
test: setup
	$(OFFLINE) python -m pytest $(PYTEST_ARGS)

lint: setup
	ruff check src stages tests tools benchmarks

typecheck: setup
	mypy

## Point DVC at the S3 remote, in the git-ignored .dvc/config.local of $(DVC_DIR): DVC_REMOTE_URL=s3://bucket/prefix,
## DVC_S3_ENDPOINT for an S3-compatible server (optional). Credentials stay in the environment (AWS_ACCESS_KEY_ID,
## AWS_SECRET_ACCESS_KEY) or an AWS profile, never in a DVC config file.
DVC_DIR ?= .
dvc-remote: setup
	@test -n "$${DVC_REMOTE_URL:-}" || { echo "error: set DVC_REMOTE_URL=s3://<bucket>/<prefix>" >&2; exit 1; }
	cd $(DVC_DIR) && dvc remote add --local --force --default storage "$$DVC_REMOTE_URL"
	@if [ -n "$${DVC_S3_ENDPOINT:-}" ]; then \
	  cd $(DVC_DIR) && dvc remote modify --local storage endpointurl "$$DVC_S3_ENDPOINT"; fi

## Published cards' hyperparameters next to what params.yaml gives the trainers.
hyperparameters: setup
	python -m tools.hyperparameters $(if $(wildcard ../shared/reference-cards),--extract ../shared/reference-cards) \
	  --write model_cards/hyperparameters.md

## Re-extract the published cards' metrics (model_cards/published/*.metrics.yaml) for the golden card test.
published-metrics: setup
	python -m tools.published_cards ../shared/reference-cards

## Regenerate the committed fixture (deterministic: a test checks the bytes match).
fixture: setup
	python -m tools.fixture fixtures

clean-smoke:
	rm -rf $(SMOKE_DIR)

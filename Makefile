# One entry point for set-up and checks. `make install` is idempotent; every other target installs
# first if needed. Uses the active virtual environment, or creates .venv at the repository root.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := $(CURDIR)/.venv
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pixelclip-installed
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install test test-fast lint format demo clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt tools/install_detectron2.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(TORCH_SPEC) "numpy<2"
	$(PY) tools/install_detectron2.py
	$(PY) -m pip install -e ".[dev,shards,onnx,demo]"
	$(PY) -c "import pixelclip, detectron2, open_clip; print('pixelclip environment ready:', detectron2.__version__)"
	@touch $(STAMP)

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: install
	$(PY) tools/quickstart.py --output-dir output/quickstart

clean:
	rm -rf output/quickstart .pytest_cache .ruff_cache

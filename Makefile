# Two commands for a fresh machine:  `make demo`  and  `make test`.
# Everything installs into ./.venv (full) and ./.venv-base (runtime only, no torch).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BASE_VENV := .venv-base
# On our CPU build machines the CPU torch wheel lies on disk; torchvision is
# only there to satisfy sam2's metadata (medk2n never imports it). Override on
# a GPU server, e.g. `make TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.13.0 torchvision==0.28.0
SAM2_SPEC ?= sam2==1.1.0
DEMO ?= demo
PYTEST_ARGS ?=

.PHONY: demo test install clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	# sam2 builds against the installed torch; build isolation would fetch a
	# second (CUDA) torch just to compile an optional extension we skip.
	SAM2_BUILD_CUDA=0 $(BIN)/pip install --quiet --disable-pip-version-check --no-build-isolation $(SAM2_SPEC)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[train,export,dev]"
	touch $@

$(BASE_VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(BASE_VENV)
	$(BASE_VENV)/bin/pip install --quiet --disable-pip-version-check .
	touch $@

demo: $(VENV)/.installed
	$(BIN)/medk2n-data phantom --out $(DEMO)/data --subjects 8 --seed 0
	$(BIN)/medk2n-data check $(DEMO)/data

test: $(VENV)/.installed $(BASE_VENV)/.installed
	MEDK2N_BASE_PYTHON=$(CURDIR)/$(BASE_VENV)/bin/python $(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(BASE_VENV) $(DEMO) build *.egg-info

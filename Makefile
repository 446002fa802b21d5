# Two commands from a fresh clone:  make workbook   then   make test
SHELL := /bin/bash
# The newest supported python3.1x on PATH (supported: pyproject.toml's requires-python); PYTHON=... overrides.
SETUP_CHECK := ds2_helpers/setup_check.py
ifndef PYTHON
PYTHON := $(shell python3 $(SETUP_CHECK) --find 2>/dev/null || command -v python3)
endif
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MINI := corpora/mini
MINI_STAMP := $(MINI)/.built
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
export PYTHONWARNINGS ?= ignore::DeprecationWarning
export GLOG_v ?= 3

.PHONY: workbook venv corpus notebooks test lab mini-checkpoint clean-outputs clean

workbook: venv corpus notebooks  ## environment + mini corpus + every notebook executed

venv: $(STAMP)
$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: no python3 found: install Python 3.10, 3.11 or 3.12 (see README, Set-up)"; exit 1; }
	@$(PYTHON) $(SETUP_CHECK) --venv $(VENV)  # Python, machine, disk, venv; creates the empty venv, asks the index
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

corpus: $(MINI_STAMP)
$(MINI_STAMP): $(STAMP) ds2_helpers/minicorpus.py ds2_helpers/espeak.py
	$(BIN)/python -m ds2_helpers minicorpus --out $(MINI) --quiet --overwrite
	touch $(MINI_STAMP)

notebooks: $(STAMP) $(MINI_STAMP)  ## run every notebook top to bottom; executed copies go to build/notebooks
	mkdir -p build/notebooks
	for nb in $(NOTEBOOKS); do \
	  echo "== $$nb"; \
	  $(BIN)/jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=3600 \
	    --output-dir build/notebooks "$$nb" || exit 1; \
	done

test: $(STAMP) $(MINI_STAMP)  ## unit tests + every notebook (quick mode) through nbmake
	DS2_QUICK=1 $(BIN)/python -m pytest tests --nbmake notebooks --nbmake-timeout=900 -p no:cacheprovider --durations=12

lab: $(STAMP) $(MINI_STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks

mini-checkpoint: $(STAMP) $(MINI_STAMP)  ## re-train data/mini_pretrained.ckpt (15 epochs of the mini corpus)
	$(BIN)/python -m ds2_helpers train --preset mini --manifest $(MINI)/train.csv --epochs 15 \
	  --out runs/mini-pretrain --weights-out data/mini_pretrained.ckpt

clean-outputs:  ## strip outputs from committed notebooks
	$(BIN)/jupyter nbconvert --clear-output --inplace $(NOTEBOOKS)

clean:
	rm -rf build runs corpora

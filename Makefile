# Two commands from a fresh clone:  make workbook   then   make test
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
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
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed (MindSpore 2.10 wheels), found {sys.version.split()[0]}: set PYTHON=/path/to/python3.11"'
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

corpus: $(MINI_STAMP)
$(MINI_STAMP): $(STAMP) ds2_helpers/minicorpus.py ds2_helpers/espeak.py
	$(BIN)/python -m ds2_helpers minicorpus --out $(MINI) --quiet
	touch $(MINI_STAMP)

notebooks: $(STAMP) $(MINI_STAMP)  ## run every notebook top to bottom; executed copies go to build/notebooks
	mkdir -p build/notebooks
	for nb in $(NOTEBOOKS); do \
	  echo "== $$nb"; \
	  $(BIN)/jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=3600 \
	    --output-dir build/notebooks "$$nb" || exit 1; \
	done

test: $(STAMP) $(MINI_STAMP)  ## unit tests + every notebook (quick mode) through nbmake
	DS2_QUICK=1 $(BIN)/python -m pytest tests --nbmake notebooks --nbmake-timeout=900 -p no:cacheprovider

lab: $(STAMP) $(MINI_STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks

mini-checkpoint: $(STAMP) $(MINI_STAMP)  ## re-train data/mini_pretrained.ckpt (about 40 min on 2 cores)
	$(BIN)/python -m ds2_helpers train --preset mini --manifest $(MINI)/train.csv --epochs 15 \
	  --out runs/mini-pretrain --weights-out data/mini_pretrained.ckpt

clean-outputs:  ## strip outputs from committed notebooks
	$(BIN)/jupyter nbconvert --clear-output --inplace $(NOTEBOOKS)

clean:
	rm -rf build runs corpora

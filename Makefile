# Two commands do all set-up on a fresh machine (Python 3.11):
#   make repro   install pinned dependencies, seed the offline Keras cache if ../shared exists,
#                fetch data/images if missing (dvc pull, else the pinned default), dvc repro
#   make test    install pinned dependencies, run the test suite
PYTHON ?= python3
VENV := .venv
SHARED ?= ../shared
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup repro test offline-cache data check

$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

setup: $(VENV)/installed

offline-cache: $(VENV)/installed
	bash scripts/offline-cache.sh $(SHARED)

data: $(VENV)/installed
	bash scripts/get-data.sh $(SHARED)

repro: offline-cache data
	dvc repro

test: $(VENV)/installed
	python -m pytest

# Verify the project without training (params, stage contract, DAG, lock, backbone, data
# source, remote); e.g. `make check ARGS="--skip remote"` where no remote is needed.
check: $(VENV)/installed
	python -m pipeline.check $(ARGS)

# Experiments side by side: the key params and metrics as columns (plain `dvc exp show`
# lists every param and metric, far too wide to read). More dvc exp show options in ARGS,
# e.g. `make exps ARGS=--all-commits` for experiments based on older commits.
KEY_COLUMNS := Experiment|base\.backbone|train_head\.learning_rate|finetune\.(learning_rate|schedule|unfreeze_layers|label_smoothing)|class_weights\.mode|head\.accuracy|finetune\.(accuracy|macro_f1)|tflite_(float32|int8)\.(size_mb|agreement)
.PHONY: exps
exps:
	dvc exp show --md --drop '.*' --keep '$(KEY_COLUMNS)' $(ARGS)

# Two commands do all set-up on a fresh machine (Python 3.11):
#   make repro   install pinned dependencies, seed the offline Keras cache if ../shared exists,
#                fetch data/images and data/ood if missing (dvc pull, else the pinned defaults), dvc repro
#   make test    install pinned dependencies, run the test suite
PYTHON ?= python3
VENV := .venv
# TensorFlow's CUDA build where an NVIDIA driver answers (nvidia-smi), else tensorflow-cpu;
# `make setup TENSORFLOW=cpu` or `TENSORFLOW=cuda` forces one (docs/scaling.md#gpus).
TENSORFLOW ?= auto
TF_BUILD := $(shell bash scripts/tensorflow-build.sh $(TENSORFLOW))
ifeq ($(TF_BUILD),invalid)
$(error TENSORFLOW=$(TENSORFLOW): use auto, cpu or cuda)
endif
INSTALLED := $(VENV)/installed-$(TF_BUILD)
SHARED ?= ../shared
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup repro test test-fast offline-cache data check

$(INSTALLED): requirements.txt scripts/setup-venv.sh
	bash scripts/setup-venv.sh $(PYTHON) $(VENV) $(TF_BUILD)
	rm -f $(VENV)/installed*
	touch $@

setup: $(INSTALLED)

offline-cache: $(INSTALLED)
	bash scripts/offline-cache.sh $(SHARED)

data: offline-cache
	bash scripts/get-data.sh $(SHARED)
	bash scripts/get-ood.sh

repro: offline-cache data
	dvc repro

test: $(INSTALLED)
	python -m pytest

# The fast tier (docs/testing.md): every test that does not run a pipeline, in a few minutes.
test-fast: $(INSTALLED)
	python -m pytest -m "not e2e and not integration"

# Verify the project without training (params, stage contract, DAG, lock, backbone, data
# source, remote); e.g. `make check ARGS="--skip remote"` where no remote is needed.
check: $(INSTALLED)
	python -m pipeline check $(ARGS)

# Experiments side by side: the key params and metrics as columns (plain `dvc exp show`
# lists every param and metric, far too wide to read). More dvc exp show options in ARGS,
# e.g. `make exps ARGS=--all-commits` for experiments based on older commits.
KEY_COLUMNS := Experiment|base\.image_size|finetune\.epochs|reports/finetune/metrics\.json:best_val_accuracy|base\.backbone|train_head\.learning_rate|finetune\.(learning_rate|schedule|unfreeze_layers|label_smoothing)|class_weights\.mode|head\.accuracy|finetune\.(accuracy|macro_f1)|tflite_(float32|int8)\.(size_mb|agreement)
.PHONY: exps
exps:
	dvc exp show --md --drop '.*' --keep '$(KEY_COLUMNS)' $(ARGS)

# The fine-tuning sweep that chose the defaults (docs/performance.md, "Fine-tuning sweep"):
# the grid below, then one run at 192 px, queued as DVC experiments and run one at a time in
# the background (`dvc queue status`, `dvc queue logs NAME`). Pick by validation accuracy:
# the reports/finetune/metrics.json:best_val_accuracy column of `make exps`.
SWEEP_GRID := -S 'finetune.learning_rate=3e-5,1e-4' -S 'finetune.epochs=10,13' -S 'finetune.unfreeze_layers=54,80'
.PHONY: sweep
sweep: $(INSTALLED)
	dvc exp run --queue $(SWEEP_GRID)
	dvc exp run --queue -S base.image_size=192 -S finetune.learning_rate=1e-4 -S finetune.epochs=10 \
	  -S finetune.unfreeze_layers=54
	dvc queue start --jobs 1

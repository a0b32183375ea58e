# Two commands do all set-up on a fresh machine (Python 3.11):
#   make repro   install pinned dependencies, seed the offline Keras cache if ../shared exists, dvc repro
#   make test    install pinned dependencies, run the test suite
PYTHON ?= python3
VENV := .venv
SHARED ?= ../shared
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup repro test offline-cache

$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

setup: $(VENV)/installed

offline-cache: $(VENV)/installed
	bash scripts/offline-cache.sh $(SHARED)

repro: offline-cache
	dvc repro

test: $(VENV)/installed
	python -m pytest

#!/usr/bin/env bash
# Bring data/ood (pinned by data/ood.dvc), the calibrate stage's out-of-distribution set, into the
# workspace when it is missing:
#   1. `dvc pull`: from the DVC cache, or the team's remote;
#   2. for the default set only: Fashion-MNIST's bags (scripts/fashion_mnist_ood.py), read by
#      keras.datasets from $KERAS_HOME/datasets/fashion-mnist where scripts/offline-cache.sh linked
#      Debian's copy, else downloaded. DVC then checks the files against the hash in data/ood.dvc.
set -euo pipefail
marker=fashion-mnist-bags  # in data/ood.dvc's desc while it pins the default set

source "$(dirname "$0")/pinned.sh"

pull ood get-ood
if ! grep -q "$marker" data/ood.dvc; then
  echo "get-ood: data/ood is missing and 'dvc pull data/ood.dvc' could not fetch it; configure the" \
       "team's remote or dvc add a folder of images of other things (docs/evaluation.md)" >&2
  exit 1
fi
tmp=data/.ood.tmp
rm -rf "$tmp"
python scripts/fashion_mnist_ood.py "$tmp"
keep_if_pinned ood "$tmp" get-ood

#!/usr/bin/env bash
# Bring data/ood (pinned by data/ood.dvc), the calibrate stage's out-of-distribution set, into the
# workspace when it is missing:
#   1. `dvc pull`: from the DVC cache, or the team's remote;
#   2. for the default set only: Fashion-MNIST's bags (scripts/fashion_mnist_ood.py), read by
#      keras.datasets from $KERAS_HOME/datasets/fashion-mnist where scripts/offline-cache.sh linked
#      Debian's copy, else downloaded. DVC then checks the files against the hash in data/ood.dvc.
set -euo pipefail
marker=fashion-mnist-bags  # in data/ood.dvc's desc while it pins the default set

[ -e data/ood ] && exit 0
if dvc pull -q data/ood.dvc 2>/dev/null; then
  echo "get-ood: data/ood pulled"
  exit 0
fi
if ! grep -q "$marker" data/ood.dvc; then
  echo "get-ood: data/ood is missing and 'dvc pull data/ood.dvc' could not fetch it; configure the" \
       "team's remote or dvc add a folder of images of other things (docs/evaluation.md)" >&2
  exit 1
fi
tmp=data/.ood.tmp
rm -rf "$tmp"
python scripts/fashion_mnist_ood.py "$tmp"
mv "$tmp" data/ood
dvc commit -f -q data/ood.dvc
if ! git diff --quiet data/ood.dvc; then
  git checkout -q data/ood.dvc
  mv data/ood data/ood.unpinned
  echo "get-ood: the files differ from the version pinned in data/ood.dvc; kept them in data/ood.unpinned" >&2
  exit 1
fi
echo "get-ood: data/ood matches data/ood.dvc"

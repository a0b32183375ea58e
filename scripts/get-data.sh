#!/usr/bin/env bash
# Bring data/images (pinned by data/images.dvc) into the workspace when it is missing
# (data/ood: scripts/get-ood.sh):
#   1. `dvc pull`: from the DVC cache, or the team's remote;
#   2. for the default dataset only: the offline copy in ../shared (or $1) where it exists,
#      else the pinned archive from GitHub. DVC then checks the files against the hash in
#      data/images.dvc and caches them, so a changed upstream can never slip in.
# Why not `dvc import` of the GitHub repository: DVC clones an imported repository for every
# `dvc status` and `dvc repro` (treeverse/dvc#10511), so nothing would run offline. Why not
# `dvc import-url` of the archive: GitHub does not promise byte-identical archives, and the
# pinned hash is of the images themselves.
set -euo pipefail
shared=${1:-../shared}
commit=11961516512414bf9f6c150a832cfd21b54a6b54
url=https://github.com/alexeygrigorev/clothing-dataset-small/archive/$commit.zip

source "$(dirname "$0")/pinned.sh"

pull images get-data
if ! grep -q "$commit" data/images.dvc; then
  echo "get-data: data/images is missing and 'dvc pull data/images.dvc' could not fetch it;" \
       "configure the team's remote (dvc remote add -d ...) or dvc add your images" >&2
  exit 1
fi
tmp=data/.images.tmp
rm -rf "$tmp"
if [ -d "$shared/datasets/clothing-dataset-small" ]; then
  echo "get-data: copying the offline copy in $shared"
  mkdir -p "$tmp"
  for split in train validation test; do cp -r "$shared/datasets/clothing-dataset-small/$split" "$tmp/"; done
  chmod -R u+w "$tmp"
else
  python -m pipeline.lib.sources "$url" "$tmp" train validation test
fi
keep_if_pinned images "$tmp" get-data

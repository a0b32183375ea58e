#!/usr/bin/env bash
# Seed Keras' cache from the offline assets in ../shared (or $1), so the default
# params.yaml runs with no network: the ImageNet weights under Keras' own file
# names, and the clothing archive that ingest.source would download, rebuilt
# from the offline copy of the same commit. Nothing is copied into the project.
# Without the assets, it does nothing and the pipeline downloads as usual.
set -euo pipefail
shared=${1:-../shared}
cache=${KERAS_HOME:-$HOME/.keras}
url=https://github.com/alexeygrigorev/clothing-dataset-small/archive/11961516512414bf9f6c150a832cfd21b54a6b54.zip

if [ ! -d "$shared/keras-cache/models" ]; then
  echo "offline-cache: no $shared/keras-cache; weights and data will be downloaded"
  exit 0
fi
mkdir -p "$cache/models" "$cache/datasets"
for f in "$shared"/keras-cache/models/*; do
  [ -e "$cache/models/$(basename "$f")" ] || ln -s "$(realpath "$f")" "$cache/models/"
done
echo "offline-cache: ImageNet weights linked into $cache/models"

data="$shared/datasets/clothing-dataset-small"
archive="$cache/datasets/$(basename "$url")"
# Only for the default source: any other URL must be downloaded for real.
if grep -qF "$url" params.yaml && [ -d "$data" ] && [ ! -e "$archive" ]; then
  echo "offline-cache: packing $data as $archive"
  (cd "$(dirname "$data")" && python3 -m zipfile -c "$archive.tmp" "$(basename "$data")")
  mv "$archive.tmp" "$archive"
fi

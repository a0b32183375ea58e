#!/usr/bin/env bash
# Seed Keras' cache from the offline assets in ../shared (or $1), so the default
# params.yaml runs with no network: the ImageNet weights, linked under Keras' own
# file names. Nothing is copied. Without the assets, it does nothing and Keras
# downloads the weights as usual. (The images: scripts/get-data.sh.)
set -euo pipefail
shared=${1:-../shared}
cache=${KERAS_HOME:-$HOME/.keras}

if [ ! -d "$shared/keras-cache/models" ]; then
  echo "offline-cache: no $shared/keras-cache; Keras downloads the weights"
  exit 0
fi
mkdir -p "$cache/models"
for f in "$shared"/keras-cache/models/*; do
  [ -e "$cache/models/$(basename "$f")" ] || ln -s "$(realpath "$f")" "$cache/models/"
done
echo "offline-cache: ImageNet weights linked into $cache/models"

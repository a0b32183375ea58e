#!/usr/bin/env bash
# Seed Keras' cache from the offline assets in ../shared (or $1), so the default
# params.yaml runs with no network: the ImageNet weights, linked under Keras' own
# file names. Nothing is copied. Without the assets, it does nothing and Keras
# downloads the weights as usual. Also Fashion-MNIST (the default out-of-distribution
# set's source, scripts/fashion_mnist_ood.py), linked from Debian's dataset-fashion-mnist
# package where it is installed (or installable: as root). (The images: scripts/get-data.sh.)
set -euo pipefail
shared=${1:-../shared}
cache=${KERAS_HOME:-$HOME/.keras}
debian=/usr/share/datasets/fashion-mnist

if [ ! -d "$debian" ] && [ ! -d "$cache/datasets/fashion-mnist" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "offline-cache: installing Debian's dataset-fashion-mnist (the default out-of-distribution set's source)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; } ||
    echo "offline-cache: could not install dataset-fashion-mnist; Keras downloads Fashion-MNIST instead"
fi
if [ -d "$debian" ] && [ ! -e "$cache/datasets/fashion-mnist" ]; then
  mkdir -p "$cache/datasets"
  ln -s "$debian" "$cache/datasets/fashion-mnist"
  echo "offline-cache: Fashion-MNIST linked into $cache/datasets"
fi

if [ ! -d "$shared/keras-cache/models" ]; then
  echo "offline-cache: no $shared/keras-cache; Keras downloads the weights"
  exit 0
fi
mkdir -p "$cache/models"
for f in "$shared"/keras-cache/models/*; do
  [ -e "$cache/models/$(basename "$f")" ] || ln -s "$(realpath "$f")" "$cache/models/"
done
echo "offline-cache: ImageNet weights linked into $cache/models"

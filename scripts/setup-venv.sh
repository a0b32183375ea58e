#!/usr/bin/env bash
# `make setup`: a venv with requirements.txt, where TensorFlow is the build tensorflow-build.sh chose:
#   cpu   tensorflow-cpu==VERSION, as requirements.txt pins it;
#   cuda  tensorflow[and-cuda]==VERSION, the same version with the CUDA libraries it was built for.
# usage: setup-venv.sh PYTHON VENV BUILD
set -euo pipefail
python=$1 venv=$2 build=$3
version=$(sed -n 's/^tensorflow-cpu==\([0-9.]*\).*/\1/p' requirements.txt)
if [ -z "$version" ]; then echo "setup: requirements.txt has no tensorflow-cpu==VERSION line" >&2; exit 1; fi
case "$build" in
  cpu) other=tensorflow ;;
  cuda) other=tensorflow-cpu ;;
  *) echo "setup: make setup TENSORFLOW=auto|cpu|cuda (got an unknown build)" >&2; exit 2 ;;
esac
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
sed "s/^tensorflow-cpu==[0-9.]*/$([ "$build" = cuda ] && echo "tensorflow[and-cuda]" || echo tensorflow-cpu)==$version/" \
  requirements.txt > "$venv/requirements-$build.txt"
# Both builds install the same `tensorflow` package: remove the other one when switching.
"$venv/bin/pip" uninstall --quiet -y "$other" >/dev/null 2>&1 || true
echo "setup: TensorFlow $version, $build build ($venv/requirements-$build.txt)"
"$venv/bin/pip" install --quiet -r "$venv/requirements-$build.txt"

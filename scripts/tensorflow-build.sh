#!/usr/bin/env bash
# Which TensorFlow build `make setup` installs: cuda where an NVIDIA driver answers `nvidia-smi -L`,
# cpu otherwise. $1 (make's TENSORFLOW variable) forces one: auto (default) | cpu | cuda.
case "${1:-auto}" in
  cpu | cuda) echo "$1" ;;
  auto) if nvidia-smi -L >/dev/null 2>&1; then echo cuda; else echo cpu; fi ;;
  *) echo invalid ;;  # the Makefile says what to use
esac

"""The DVC stages, one script each, run by dvc.yaml as ``python -m pipeline <name>``."""

"""Where Keras keeps what it downloads (ImageNet weights, keras.datasets): ``$KERAS_HOME``, else
``~/.keras``, as Keras documents it. A cache seeded there (scripts/offline-cache.sh) works offline."""
from __future__ import annotations

import os
from pathlib import Path


def keras_cache_dir() -> Path:
    """Keras' cache (``$KERAS_HOME``, default ``~/.keras``): downloads land there, so a
    pre-seeded cache works offline."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")

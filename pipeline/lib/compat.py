"""Guards for the few private or undocumented interfaces the pipeline relies on.

Each use names the package version it was written for; on any other version it stops with a
message that says what to check (docs/internals.md lists every such use, and why). An upgrade
then fails loudly at the one place to look at, never silently. No TensorFlow imported here.
"""
from __future__ import annotations

import importlib.metadata

from pipeline.lib.errors import StageError

# Distribution names to try for a package, in order (TensorFlow comes as tensorflow-cpu here).
DISTRIBUTIONS = {"tensorflow": ("tensorflow-cpu", "tensorflow")}


def installed(package: str) -> str | None:
    """The installed version of ``package`` (its pip distribution), or None."""
    for name in DISTRIBUTIONS.get(package, (package,)):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def matches(package: str, written_for: str) -> bool:
    """Whether the installed ``package`` is ``written_for`` (a version or its prefix, e.g. "3.15")."""
    version = installed(package) or ""
    return version == written_for or version.startswith(written_for + ".")


def require(package: str, written_for: str, use: str, check: str) -> None:
    """Stop unless ``package`` is the version ``use`` was written for, saying what to ``check``."""
    if not matches(package, written_for):
        raise StageError(f"{use} relies on an undocumented part of {package} {written_for}, and "
                         f"{package} {installed(package) or '(not installed)'} is installed: {check}; "
                         f"then update its guard (docs/internals.md)")

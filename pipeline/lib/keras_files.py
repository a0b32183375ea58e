""".keras files: saved for inference and byte-reproducible (the same model gives the same bytes, so
DVC sees no change), loaded in Keras' safe mode (nothing unpickled), a bad file named as damaged."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras

import pipeline.lib.models  # noqa: F401  the module itself, not its lazy stand-in: it registers the
# pipeline's layers (Preprocess, Standardize, Known), which loading a .keras file that holds them needs
from pipeline.lib import artifacts, errors, models


def save(model: keras.Model, path: Path) -> None:
    """Save the model for inference: architecture and weights in float32 (whatever policy it
    trained under), without the optimizer state and training loss (a fresh functional model
    over the same layers is never compiled)."""
    model = models.with_precision(model, "float32")
    with artifacts.atomic_file(path) as tmp:
        keras.Model(model.inputs, model.outputs, name=model.name).save(tmp)
        _make_reproducible(tmp)


# What `_make_reproducible` writes for the save time: the reproducible-builds convention, as DVC
# compares files by content and git already dates every version.
FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)


# The .keras zip layout `_make_reproducible` rewrites: Keras' saving format, not a documented
# interface. Written for Keras 3.15; checked on every save (tests/test_models.py fails otherwise).
KERAS_ARCHIVE = {"metadata.json", "config.json", "model.weights.h5"}


def _check_archive(path: Path, members: list[str], meta: dict) -> None:
    if set(members) != KERAS_ARCHIVE or "date_saved" not in meta:
        raise errors.StageError(
            f"{path.name}: this Keras ({keras.__version__}) saves .keras files as {sorted(members)} with metadata "
            f"keys {sorted(meta)}; the reproducible save (pipeline/lib/keras_files.py, _make_reproducible) was written "
            f"for Keras 3.15's {sorted(KERAS_ARCHIVE)} with metadata.json's date_saved: check where the save "
            "time and Python object addresses are stored now, then update KERAS_ARCHIVE")


def _make_reproducible(path: Path) -> None:
    """Rewrite a ``.keras`` zip so the same model gives the same bytes, and DVC sees no change:
    without its save time (``metadata.json``'s ``date_saved``, the members' zip dates), and with
    ``config.json``'s ``shared_object_id`` values (Python object addresses) numbered in order."""
    with zipfile.ZipFile(path) as zf:
        members = [(info, zf.read(info)) for info in zf.infolist()]
    meta = next((json.loads(data) for info, data in members if info.filename == "metadata.json"), {})
    _check_archive(path, [info.filename for info, _ in members], meta)
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in members:
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta["date_saved"] = "{:04d}-{:02d}-{:02d}@{:02d}:{:02d}:{:02d}".format(*FIXED_DATE_TIME)
                data = json.dumps(meta).encode()
            elif info.filename == "config.json":
                data = json.dumps(_number_shared_objects(json.loads(data), {})).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=FIXED_DATE_TIME)
            fixed.external_attr = info.external_attr
            zf.writestr(fixed, data, compress_type=info.compress_type)


def _number_shared_objects(node, numbers: dict):
    """The config with each distinct ``shared_object_id`` replaced by 0, 1, 2... in order of first
    appearance: the same sharing, without the memory addresses."""
    if isinstance(node, dict):
        return {k: numbers.setdefault(v, len(numbers)) if k == "shared_object_id"
                else _number_shared_objects(v, numbers) for k, v in node.items()}
    if isinstance(node, list):
        return [_number_shared_objects(v, numbers) for v in node]
    return node


def load(path: Path) -> keras.Model:
    """Load a saved model in safe mode: no Lambda layers, nothing unpickled."""
    if not Path(path).is_file():
        raise errors.missing_input(path)
    if not zipfile.is_zipfile(path):  # Keras would answer "File not found" for such a file
        raise errors.damaged(path, "not a .keras zip archive")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as err:  # zipfile, h5py and Keras each raise their own types for a bad file
        raise errors.damaged(path, f"not a readable Keras model: {type(err).__name__}: "
                                      f"{(str(err).strip().splitlines() or [''])[0][:300]}") from err

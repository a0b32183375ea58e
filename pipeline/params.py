"""params.yaml -> typed, validated sections; each stage sees only the keys it declares.

A stage calls ``load(PARAMS)`` with the same keys its ``dvc.yaml`` entry lists
under ``params:``. The whole file is validated (so a typo anywhere stops every
stage with the key's name), but the returned object only holds the declared
keys: reading an undeclared one is an ``AttributeError``, which keeps the code
and the DVC dependencies honest (see tests/test_contract.py).
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

PARAMS_FILE = "params.yaml"  # DVC's default params file, read from the project root
# Upper bounds that stop a typo from exhausting memory long after the stage started
# (an image batch is batch x size x size x 3 floats, before any activations).
MAX_IMAGE_SIZE = 1024
MAX_IMAGE_BATCH = 1024
MAX_FEATURE_BATCH = 65536  # train_head batches hold feature vectors, not images
WEIGHTS_SUFFIXES = (".keras", ".weights.h5", ".h5", ".hdf5")  # what keras' load_weights reads


class ParamsError(ValueError):
    """A params.yaml problem; the message names the key and what is allowed."""


class _Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where ``3e-05`` (no dot) is a string; DVC reads YAML 1.2, where it
    is a float, and writes it that way: ``dvc exp run -S finetune.learning_rate=3e-5`` puts
    ``learning_rate: 3e-05`` into params.yaml. Read such numbers as floats, as DVC does."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


@dataclasses.dataclass(frozen=True)
class Ingest:
    """How to read the source (its path is in dvc.yaml: a DVC-tracked folder or archive)."""
    labels_csv: Optional[str]  # CSV inside the source giving each image's label
    image_dir: Optional[str]  # folder the CSV's image paths are relative to (default: the CSV's)
    csv_image_column: str  # relative path, or file name without extension
    csv_label_column: str
    csv_split_column: Optional[str]  # optional train / validation (val) / test column
    max_unpacked_mb: float  # an archive source may unpack to at most this many megabytes...
    max_expansion_ratio: float  # ...and to at most this many times its own size

    def check(self) -> list[str]:
        return _at_least("ingest.max_unpacked_mb", self.max_unpacked_mb, 1) + _at_least(
            "ingest.max_expansion_ratio", self.max_expansion_ratio, 1)


@dataclasses.dataclass(frozen=True)
class Split:
    strategy: str  # auto | predefined | stratified
    val_fraction: float
    test_fraction: float
    drop_labels: list[str]  # e.g. ["not sure"]
    merge_labels: dict[str, str]  # {old label: new label}
    min_images_per_class: int  # fewer (after dropping and merging) makes a small class
    small_classes: str  # drop (with a warning) | merge (into "other") | fail

    def check(self) -> list[str]:
        errors = _one_of("split.strategy", self.strategy, ("auto", "predefined", "stratified"))
        errors += _between("split.val_fraction", self.val_fraction, 0, 1, low_open=True)
        errors += _between("split.test_fraction", self.test_fraction, 0, 1, low_open=True)
        if self.val_fraction + self.test_fraction >= 1:
            errors.append("split.val_fraction + split.test_fraction must be < 1 "
                          f"(got {self.val_fraction + self.test_fraction:g})")
        errors += _at_least("split.min_images_per_class", self.min_images_per_class, 1)
        return errors + _one_of("split.small_classes", self.small_classes, ("drop", "merge", "fail"))


@dataclasses.dataclass(frozen=True)
class Base:
    backbone: str  # any keras.applications model name, e.g. MobileNetV2
    weights: str  # imagenet | none | path to a weights file
    image_size: int
    pooling: str  # avg | max

    def check(self) -> list[str]:
        errors = _in_range("base.image_size", self.image_size, 32, MAX_IMAGE_SIZE)
        if self.weights not in ("imagenet", "none") and not self.weights.endswith(WEIGHTS_SUFFIXES):
            errors.append(f"base.weights must be imagenet, none or a Keras weights file "
                          f"({' / '.join(WEIGHTS_SUFFIXES)}), got {self.weights!r}")
        return errors + _one_of("base.pooling", self.pooling, ("avg", "max"))


@dataclasses.dataclass(frozen=True)
class Augment:
    copies: int  # augmented variants per training image, besides the original
    flip: str  # none | horizontal | vertical | horizontal_and_vertical
    rotation: float  # fraction of a full turn, as keras.layers.RandomRotation
    zoom: float
    translation: float
    contrast: float

    def check(self) -> list[str]:
        errors = _in_range("augment.copies", self.copies, 0, 100)
        errors += _one_of("augment.flip", self.flip,
                          ("none", "horizontal", "vertical", "horizontal_and_vertical"))
        for name in ("rotation", "zoom", "translation", "contrast"):
            errors += _between(f"augment.{name}", getattr(self, name), 0, 1)
        return errors


@dataclasses.dataclass(frozen=True)
class Extract:
    batch_size: int

    def check(self) -> list[str]:
        return _in_range("extract.batch_size", self.batch_size, 1, MAX_IMAGE_BATCH)


@dataclasses.dataclass(frozen=True)
class TrainHead:
    hidden_units: int  # 0: a linear classifier on the features
    dropout: float
    learning_rate: float
    epochs: int
    batch_size: int
    patience: int  # early stopping on validation loss
    label_smoothing: float  # share of each target spread over all classes (0: none)

    def check(self) -> list[str]:
        return _training_checks("train_head", self, MAX_FEATURE_BATCH) + _in_range(
            "train_head.hidden_units", self.hidden_units, 0, 65536) + _between(
            "train_head.dropout", self.dropout, 0, 1)


@dataclasses.dataclass(frozen=True)
class Finetune:
    unfreeze_layers: int  # how many of the backbone's top layers to train
    learning_rate: float
    epochs: int
    batch_size: int
    patience: int
    online_augmentation: bool  # apply the augment.* transforms on the fly
    schedule: str  # constant | cosine (decay to zero over finetune.epochs)
    warmup_epochs: float  # linear warm-up from 0 to learning_rate over this many epochs
    label_smoothing: float

    def check(self) -> list[str]:
        errors = _training_checks("finetune", self, MAX_IMAGE_BATCH) + _at_least(
            "finetune.unfreeze_layers", self.unfreeze_layers, 0)
        errors += _one_of("finetune.schedule", self.schedule, ("constant", "cosine"))
        errors += _at_least("finetune.warmup_epochs", self.warmup_epochs, 0)
        if self.warmup_epochs >= self.epochs:
            errors.append(f"finetune.warmup_epochs must be < finetune.epochs ({self.epochs}), "
                          f"got {self.warmup_epochs}")
        return errors


@dataclasses.dataclass(frozen=True)
class ClassWeights:
    mode: str  # auto | balanced | none
    auto_ratio: float  # auto: balanced once the largest class has this many times the smallest's images

    def check(self) -> list[str]:
        return _one_of("class_weights.mode", self.mode, ("auto", "balanced", "none")) + _at_least(
            "class_weights.auto_ratio", self.auto_ratio, 1)


@dataclasses.dataclass(frozen=True)
class Evaluate:
    batch_size: int

    def check(self) -> list[str]:
        return _in_range("evaluate.batch_size", self.batch_size, 1, MAX_IMAGE_BATCH)


@dataclasses.dataclass(frozen=True)
class Export:
    representative_images: int  # training images that calibrate the int8 TFLite model

    def check(self) -> list[str]:
        return _in_range("export.representative_images", self.representative_images, 1, 10_000)


@dataclasses.dataclass(frozen=True)
class Distribution:
    strategy: str  # single | auto | mirrored | multi_worker (pipeline/distribution.py)

    def check(self) -> list[str]:
        return _one_of("distribution.strategy", self.strategy, ("single", "auto", "mirrored", "multi_worker"))


SECTIONS: dict[str, type] = {
    "ingest": Ingest, "split": Split, "base": Base, "augment": Augment, "extract": Extract,
    "class_weights": ClassWeights, "distribution": Distribution, "train_head": TrainHead, "finetune": Finetune,
    "evaluate": Evaluate, "export": Export,
}
TOP_LEVEL = {"seed": int}  # in [0, 2**32): what numpy's and TensorFlow's seeds take


def all_keys() -> list[str]:
    """Every dotted key params.yaml may hold, e.g. ``finetune.learning_rate``."""
    keys = list(TOP_LEVEL)
    for name, cls in SECTIONS.items():
        keys += [f"{name}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


def expand(keys: Iterable[str]) -> list[str]:
    """Section names become their dotted keys: ``["seed", "split"]`` -> ``["seed", "split.strategy", ...]``."""
    out = []
    for key in keys:
        if key in SECTIONS:
            out += [f"{key}.{f.name}" for f in dataclasses.fields(SECTIONS[key])]
        elif key in all_keys():
            out.append(key)
        else:
            raise ParamsError(f"unknown params key {key!r}")
    return out


def parse(raw: Any) -> dict[str, Any]:
    """Validate a params mapping; returns ``{"seed": int, "<section>": dataclass, ...}``."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{PARAMS_FILE} must be a mapping of sections, got {type(raw).__name__}")
    errors, parsed = [], {}
    allowed = set(TOP_LEVEL) | set(SECTIONS)
    for key in sorted(set(raw) - allowed, key=str):
        errors.append(f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
    for key, typ in TOP_LEVEL.items():
        if key not in raw:
            errors.append(f"missing key {key!r}")
        else:
            errors += _type_errors(key, raw[key], typ) or _in_range(key, raw[key], 0, 2**32 - 1)
            parsed[key] = raw[key]
    for name, cls in SECTIONS.items():
        section = raw.get(name)
        if not isinstance(section, dict):
            errors.append(f"missing section {name!r}" if section is None
                          else f"{name} must be a mapping, got {type(section).__name__}")
            continue
        section_errors, values = _parse_section(name, cls, section)
        errors += section_errors
        if not section_errors:
            parsed[name] = cls(**values)
            errors += parsed[name].check()
    if errors:
        raise ParamsError(f"invalid {PARAMS_FILE}:\n  - " + "\n  - ".join(errors))
    return parsed


def load(keys: Iterable[str], path: str | Path = PARAMS_FILE) -> types.SimpleNamespace:
    """Validate the whole params file and return only ``keys`` (sections or dotted keys)."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found (run from the project root)")
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from None
    parsed = parse(raw)
    view: dict[str, Any] = {}
    for key in keys:
        if key in TOP_LEVEL or key in SECTIONS:
            view[key] = parsed[key]
            continue
        section, _, field = key.partition(".")
        expand([key])  # raises for an unknown key
        view.setdefault(section, types.SimpleNamespace())
        setattr(view[section], field, getattr(parsed[section], field))
    return types.SimpleNamespace(**view)


def _parse_section(name: str, cls: type, section: dict) -> tuple[list[str], dict]:
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    errors = [f"unknown key '{name}.{k}' (allowed: {', '.join(fields)})"
              for k in section if k not in fields]
    values = {}
    for field_name in fields:
        key = f"{name}.{field_name}"
        if field_name not in section:
            errors.append(f"missing key {key!r}")
            continue
        value = section[field_name]
        if hints[field_name] is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # YAML writes 1 for 1.0
        errors += _type_errors(key, value, hints[field_name])
        values[field_name] = value
    return errors, values


def _type_errors(key: str, value: Any, typ: Any) -> list[str]:
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (list, dict):  # list[str] or dict[str, str]: every item must be a str
        items = value if origin is list else [*value.keys(), *value.values()] if isinstance(value, dict) else None
        if isinstance(value, origin) and all(isinstance(v, str) for v in items):
            return []
        want = "a list of strings" if origin is list else "a mapping of strings to strings"
        return [f"{key} must be {want}, got {value!r}"]
    optional = type(None) in args
    if optional:  # Optional[X]
        if value is None:
            return []
        typ = next(a for a in args if a is not type(None))
    # bool is an int subclass in Python; `epochs: true` must not pass as 1
    if isinstance(value, typ) and not (isinstance(value, bool) and typ is not bool):
        if typ is float and not math.isfinite(value):  # YAML's .inf and .nan pass every comparison check
            return [f"{key} must be a finite number, got {value}"]
        return []
    shown = "null" if value is None else f"{value!r} ({type(value).__name__})"
    return [f"{key} must be {typ.__name__}{' or null' if optional else ''}, got {shown}"]


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> list[str]:
    return [] if value in allowed else [f"{key} must be one of {', '.join(allowed)}; got {value!r}"]


def _at_least(key: str, value: float, low: float) -> list[str]:
    return [] if value >= low else [f"{key} must be >= {low}, got {value}"]


def _in_range(key: str, value: float, low: float, high: float) -> list[str]:
    return [] if low <= value <= high else [f"{key} must be in [{low}, {high}], got {value}"]


def _between(key: str, value: float, low: float, high: float, low_open: bool = False) -> list[str]:
    ok = (low < value if low_open else low <= value) and value < high
    bracket = "(" if low_open else "["
    return [] if ok else [f"{key} must be in {bracket}{low}, {high}), got {value}"]


def _training_checks(section: str, p: Any, max_batch: int) -> list[str]:
    errors = [] if p.learning_rate > 0 else [f"{section}.learning_rate must be > 0, got {p.learning_rate}"]
    errors += _at_least(f"{section}.epochs", p.epochs, 1)
    errors += _in_range(f"{section}.batch_size", p.batch_size, 1, max_batch)
    errors += _between(f"{section}.label_smoothing", p.label_smoothing, 0, 1)
    return errors + _at_least(f"{section}.patience", p.patience, 0)

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
import reprlib
import types
import typing
import unicodedata
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
# params.yaml is input too: a file this large, or values that expand (YAML aliases included) to this
# many nodes, is refused before anything walks them; a listing of errors shows the first few.
MAX_FILE_BYTES = 1_000_000
MAX_NODES = 100_000
MAX_ERRORS = 20
_shown = reprlib.Repr()
_shown.maxstring, _shown.maxother, _shown.maxlist, _shown.maxdict, _shown.maxlevel = 60, 60, 8, 8, 3


class ParamsError(ValueError):
    """A params.yaml problem; the message names the key and what is allowed."""


class _Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where ``3e-05`` (no dot) is a string; DVC reads YAML 1.2, where it
    is a float, and writes it that way: ``dvc exp run -S finetune.learning_rate=3e-5`` puts
    ``learning_rate: 3e-05`` into params.yaml. Read such numbers as floats, as DVC does."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """A mapping whose keys are distinct: a key given twice is refused, as DVC refuses it
    (PyYAML would keep the last one without a word)."""
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, typing.Hashable) and key in seen:
            raise ParamsError(f"{PARAMS_FILE} line {key_node.start_mark.line + 1}: key {key!r} given twice")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def param(doc: str, *, low: float | None = None, high: float | None = None, low_open: bool = False,
          high_open: bool = False, choices: tuple[str, ...] | None = None) -> Any:
    """A params.yaml key's one declaration: its type is the field's annotation, its value lives in
    params.yaml, and validation, the docs' table (``python -m pipeline.lib.params``) and the checks of
    ``tests/test_params.py`` all read this."""
    return dataclasses.field(metadata={"doc": doc, "low": low, "high": high, "low_open": low_open,
                                       "high_open": high_open, "choices": choices})


@dataclasses.dataclass(frozen=True)
class Ingest:
    """How to read the source (its path is in dvc.yaml: a DVC-tracked folder or archive)."""
    labels_csv: Optional[str] = param("path of a labels CSV inside `data/images` (folder or archive); "
                                      "`null` to use class folders")
    image_dir: Optional[str] = param("folder the CSV's image paths are relative to, relative to the CSV; "
                                     "`null` for the CSV's own folder")
    csv_image_column: str = param("CSV column holding the image path, or the file name without extension")
    csv_label_column: str = param("CSV column holding the label (`task: multi_label`: the image's labels, "
                                  "joined by `ingest.label_separator`; empty for none of them)")
    label_separator: str = param("`task: multi_label`: what separates an image's labels in "
                                 "`ingest.csv_label_column` (a vertical bar by default)")
    csv_label_columns: list[str] = param("`task: multi_label`: one 0/1 CSV column per label instead of "
                                         "`ingest.csv_label_column` (the column names are the labels); "
                                         "`[]` for none")
    csv_split_column: Optional[str] = param("optional CSV column holding `train` / `validation` / `test`; "
                                            "`null` for none")
    max_unpacked_mb: float = param("an archive source may unpack to at most this many megabytes (checked on "
                                   "its headers, then on the bytes written)", low=1)
    max_expansion_ratio: float = param("...and to at most this many times its own size: photos barely "
                                       "compress, so more is an archive bomb", low=1)

    def check(self) -> list[str]:
        errors = []
        if not self.label_separator.strip() or len(self.label_separator) > 8:
            errors.append(f"ingest.label_separator must be 1 to 8 characters, not all spaces; "
                          f"got {_shown.repr(self.label_separator)}")
        errors += [f"ingest.csv_label_columns: label {_shown.repr(label)} {problem}"
                   for label in self.csv_label_columns if (problem := label_problem(label))]
        if len(set(self.csv_label_columns)) != len(self.csv_label_columns):
            errors.append("ingest.csv_label_columns names a column twice")
        return errors


@dataclasses.dataclass(frozen=True)
class Split:
    strategy: str = param("`auto`: the source's own train / validation / test folders if present, else "
                          "stratified", choices=("auto", "predefined", "stratified"))
    val_fraction: float = param("share of all images for validation when the split is made here",
                                low=0, high=1, low_open=True, high_open=True)
    test_fraction: float = param("share of all images for test when the split is made here; the two "
                                 "fractions sum to < 1", low=0, high=1, low_open=True, high_open=True)
    drop_labels: list[str] = param('list of labels to leave out, e.g. `["not sure"]`')
    merge_labels: dict[str, str] = param('mapping of labels to rename or merge, e.g. `{"t-shirt": "shirt"}`')
    min_images_per_class: int = param("classes with fewer images (after dropping and merging) are small", low=1)
    small_classes: str = param("small classes are dropped (with a warning), merged into `other`, or fail "
                               "the stage (an error naming them)", choices=("drop", "merge", "fail"))
    group_near_duplicates: bool = param("keep each group of near duplicates (`audit.duplicate_similarity`) "
                                        "within one split, so no evaluation image has a near twin in train")

    def check(self) -> list[str]:
        errors = []
        if self.val_fraction + self.test_fraction >= 1:
            errors.append("split.val_fraction + split.test_fraction must be < 1 "
                          f"(got {self.val_fraction + self.test_fraction:g})")
        for key, labels in (("drop_labels", self.drop_labels), ("merge_labels", [*self.merge_labels.keys()]),
                            ("merge_labels", [*self.merge_labels.values()])):
            errors += [f"split.{key}: label {_shown.repr(label)} {problem}" for label in labels
                       if (problem := label_problem(label))]
        return errors


@dataclasses.dataclass(frozen=True)
class Base:
    backbone: str = param("`keras.applications` model name, e.g. `MobileNetV2`")
    weights: str = param("`imagenet`, `none` (random initialisation), or a path to a Keras weights file "
                         "(`.keras`, `.weights.h5`, `.h5`) for this backbone without its top")
    image_size: int = param("input size in pixels (square)", low=32, high=MAX_IMAGE_SIZE)
    pooling: str = param("how the backbone's last feature map becomes one vector", choices=("avg", "max"))

    def check(self) -> list[str]:
        if self.weights not in ("imagenet", "none") and not self.weights.endswith(WEIGHTS_SUFFIXES):
            return [f"base.weights must be imagenet, none or a Keras weights file "
                    f"({' / '.join(WEIGHTS_SUFFIXES)}), got {self.weights!r}"]
        return []


@dataclasses.dataclass(frozen=True)
class Augment:
    copies: int = param("augmented variants written per training image, besides the original (0 for none)",
                        low=0, high=100)
    flip: str = param("random flips", choices=("none", "horizontal", "vertical", "horizontal_and_vertical"))
    rotation: float = param("maximum rotation as a fraction of a full turn (0.05 = 18 degrees)",
                            low=0, high=1, high_open=True)
    zoom: float = param("maximum zoom in or out, as a fraction of the size", low=0, high=1, high_open=True)
    translation: float = param("maximum shift, as a fraction of the size", low=0, high=1, high_open=True)
    contrast: float = param("maximum contrast change factor", low=0, high=1, high_open=True)


@dataclasses.dataclass(frozen=True)
class Extract:
    batch_size: int = param("images per batch through the backbone (bounds memory)", low=1, high=MAX_IMAGE_BATCH)


@dataclasses.dataclass(frozen=True)
class TrainHead:
    hidden_units: int = param("units of a hidden ReLU layer in the head; 0 for a linear classifier",
                              low=0, high=65536)
    dropout: float = param("dropout rate before (and after) the hidden layer", low=0, high=1, high_open=True)
    learning_rate: float = param("Adam learning rate for the head", low=0, low_open=True)
    epochs: int = param("maximum epochs over the cached features", low=1)
    batch_size: int = param("feature vectors per batch, per device", low=1, high=MAX_FEATURE_BATCH)
    patience: int = param("epochs without a lower validation loss before stopping (best epoch kept; 0 acts as 1)",
                          low=0)
    label_smoothing: float = param("share of each target spread over all classes", low=0, high=1, high_open=True)


@dataclasses.dataclass(frozen=True)
class Finetune:
    unfreeze_layers: int = param("how many of the backbone's top layers to train; BatchNorm layers among "
                                 "them stay frozen", low=0)
    learning_rate: float = param("Adam learning rate for fine-tuning; keep it low (1e-5 to 1e-4: make sweep picked 1e-4)", low=0, low_open=True)
    epochs: int = param("maximum epochs over the training images", low=1)
    batch_size: int = param("images per batch, per device", low=1, high=MAX_IMAGE_BATCH)
    patience: int = param("epochs without a lower validation loss before stopping (best epoch kept; 0 acts as 1)",
                          low=0)
    online_augmentation: bool = param("also apply the `augment.*` transforms on the fly while fine-tuning")
    schedule: str = param("`cosine` decays to 0 over `finetune.epochs`", choices=("constant", "cosine"))
    warmup_epochs: float = param("linear warm-up from 0 to `finetune.learning_rate` over this many epochs "
                                 "(0: none; may be fractional), less than `finetune.epochs`", low=0)
    label_smoothing: float = param("share of each target spread over all classes", low=0, high=1, high_open=True)

    def check(self) -> list[str]:
        if self.warmup_epochs >= self.epochs:
            return [f"finetune.warmup_epochs must be < finetune.epochs ({self.epochs}), got {self.warmup_epochs}"]
        return []


@dataclasses.dataclass(frozen=True)
class ClassWeights:
    mode: str = param("`auto`: balanced once the classes differ by `auto_ratio`; for the head and fine-tuning",
                      choices=("auto", "balanced", "none"))
    auto_ratio: float = param("largest / smallest training class at which `auto` weights the classes", low=1)


@dataclasses.dataclass(frozen=True)
class Evaluate:
    batch_size: int = param("batch size for scoring the test split (evaluate and export)", low=1, high=MAX_IMAGE_BATCH)
    tta: str = param("test-time augmentation also measured on the fine-tuned model: horizontal_flip averages "
                     "each image's probabilities with its mirror's (finetune_tta in the metrics; predict --tta)",
                     choices=("none", "horizontal_flip"))
    label_precision: Optional[float] = param("`task: multi_label`: each label's threshold is the lowest whose "
                                             "validation precision reaches this; `null` for the threshold of "
                                             "highest validation F1", low=0, high=1, low_open=True)


@dataclasses.dataclass(frozen=True)
class Export:
    representative_images: int = param("training images (seeded sample) that calibrate the int8 TFLite model",
                                       low=1, high=10_000)
    timing_runs: int = param("batch-1 calls timed per exported format (after 3 untimed); the throughput is "
                             "timed on the scoring pass's own batches", low=8, high=10_000)


@dataclasses.dataclass(frozen=True)
class Calibrate:
    """Calibrated probabilities and "unknown" ([Knowing what it does not know](evaluation.md))."""
    unknown_keep: float = param("share of the validation images kept (not called unknown): the unknown threshold "
                                "on the energy of the logits (known's centre) is set to keep it", low=0, high=1,
                                low_open=True)


@dataclasses.dataclass(frozen=True)
class Audit:
    """What the data audit flags ([The data audit](data.md#the-audit)); split reads the first two."""
    duplicate_similarity: float = param("two images whose embeddings' cosine similarity reaches this are near "
                                        "duplicates", low=0, high=1, low_open=True)
    neighbours: int = param("nearest neighbours searched per image: for near duplicates and outliers", low=1,
                            high=1000)
    folds: int = param("folds of the out-of-sample classifier whose probabilities find label issues", low=2,
                       high=50)
    label_issue_probability: float = param("an image is a label issue when the estimated probability that its "
                                           "given label is wrong reaches this", low=0, high=1, low_open=True)
    outlier_z: float = param("an image whose distance to its nearest neighbours lies this many robust standard "
                             "deviations above the median is an outlier", low=0, low_open=True)
    dark: float = param("mean brightness (0-1) below which an image is too dark", low=0, high=1)
    bright: float = param("mean brightness (0-1) above which an image is overexposed", low=0, high=1)
    blur_z: float = param("an image whose blur lies this many robust standard deviations above the data's "
                          "median is blurred", low=0, low_open=True)
    low_information: float = param("grey-level entropy (bits, 0-8) below which an image is near-constant",
                                   low=0, high=8)
    max_aspect_ratio: float = param("long side / short side above which an image's shape is extreme", low=1)
    low_resolution: float = param("an original whose short side is below this share of the data's median short "
                                  "side (and below base.image_size) is low resolution", low=0, high=1, low_open=True)
    gallery: int = param("images shown per issue type in reports/audit/*.png", low=1, high=200)

    def check(self) -> list[str]:
        if self.dark >= self.bright:
            return [f"audit.dark ({self.dark:g}) must be below audit.bright ({self.bright:g})"]
        return []


@dataclasses.dataclass(frozen=True)
class Distribution:
    strategy: str = param("where `train_head` and `finetune` run ([Beyond one machine](scaling.md))",
                          choices=("single", "auto", "mirrored", "multi_worker"))
    precision: str = param("dtype policy `train_head` and `finetune` compute in; the softmax, the loss and the "
                           "saved models stay float32 ([Beyond one machine](scaling.md#mixed-precision))",
                           choices=("float32", "mixed_float16", "mixed_bfloat16"))


SECTIONS: dict[str, type] = {
    "ingest": Ingest, "split": Split, "base": Base, "augment": Augment, "extract": Extract,
    "class_weights": ClassWeights, "distribution": Distribution, "train_head": TrainHead, "finetune": Finetune,
    "calibrate": Calibrate, "evaluate": Evaluate, "export": Export, "audit": Audit,
}
TOP_LEVEL = {"seed": (int, param("the one seed for every random step: split, augmentation, weight init, "
                                  "shuffling, dropout", low=0, high=2**32 - 1)),  # what numpy and TF take
             "task": (str, param("`single_label`: one class per image (class folders or a labels CSV); "
                                 "`multi_label`: any number of labels per image, none included (a labels CSV: "
                                 "[Multi-label](multilabel.md))", choices=("single_label", "multi_label")))}


def all_keys() -> list[str]:
    """Every dotted key params.yaml may hold, e.g. ``finetune.learning_rate``."""
    keys = list(TOP_LEVEL)
    for name, cls in SECTIONS.items():
        keys += [f"{name}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


def expand(keys: Iterable[str]) -> list[str]:
    """Section names become their dotted keys: ``["seed", "split"]`` -> ``["seed", "split.strategy", ...]``."""
    out, known = [], all_keys()
    for key in keys:
        if key in SECTIONS:
            out += [f"{key}.{f.name}" for f in dataclasses.fields(SECTIONS[key])]
        elif key in known:
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
        errors.append(f"unknown key {str(key)[:60]!r} (allowed: {', '.join(sorted(allowed))})")
    for key, (typ, declared) in TOP_LEVEL.items():
        if key not in raw:
            errors.append(f"missing key {key!r}")
        else:
            errors += _type_errors(key, raw[key], typ) or _value_errors(key, raw[key], declared.metadata)
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
            if hasattr(cls, "check"):  # rules across keys, which one key's declaration cannot state
                errors += parsed[name].check()
    if errors:
        more = [f"... and {len(errors) - MAX_ERRORS:,} more"] if len(errors) > MAX_ERRORS else []
        raise ParamsError(f"invalid {PARAMS_FILE}:\n  - " + "\n  - ".join(errors[:MAX_ERRORS] + more))
    return parsed


def load(keys: Iterable[str], path: str | Path = PARAMS_FILE) -> types.SimpleNamespace:
    """Validate the whole params file and return only ``keys`` (sections or dotted keys)."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found (run from the project root)")
    parsed = parse(read_yaml(path))
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


# Caps that bound work and never change an output: ingest declares them (it checks the source
# against them); a later stage reads them here only to unpack an archive source again, undeclared,
# so that changing one reruns ingest alone (sources.locate).
LIMITS = ["ingest.max_unpacked_mb", "ingest.max_expansion_ratio"]


def limits(path: str | Path = PARAMS_FILE) -> types.SimpleNamespace:
    """The ``ingest`` archive caps (``LIMITS``), read without being a stage's declared params."""
    return load(LIMITS, path).ingest


def read_yaml(path: Path) -> Any:
    """``path`` as YAML, refused in one line (naming the file) when it is not UTF-8, larger than
    MAX_FILE_BYTES, expands to more than MAX_NODES values (an alias bomb), repeats a key, or is
    not YAML."""
    if (size := path.stat().st_size) > MAX_FILE_BYTES:
        raise ParamsError(f"{path} is {size:,} bytes, over the {MAX_FILE_BYTES:,} a params file may hold")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ParamsError(f"{path} is not UTF-8 text (line {line}: {data[err.start:err.start + 4]!r}); "
                          "save it as UTF-8") from err
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if (count := _expanded(node, {})) > MAX_NODES:
            raise ParamsError(f"{path}: its values expand to {count:,} or more nodes (YAML aliases "
                              f"included), over the {MAX_NODES:,} a params file may hold")
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from err
    finally:
        loader.dispose()


def _expanded(node: yaml.Node, memo: dict) -> int:
    """How many nodes ``node`` stands for with every alias expanded (memoized per node, so an
    alias bomb is counted without being expanded; stops counting past MAX_NODES)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = MAX_NODES + 1  # a recursive alias counts as too many
    total = 1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    for child in children:
        total += _expanded(child, memo)
        if total > MAX_NODES:
            break
    memo[id(node)] = total
    return total


def label_problem(label: str) -> str | None:
    """Why ``label`` cannot be a class name (it must fit on one line of labels.txt and be a
    folder name), or None. Class folders, CSV labels and labels in params all pass this."""
    if not label.strip():
        return "is empty"
    if label.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") != label:
        return "is not valid UTF-8"
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in label):  # newlines, tabs, NUL, ...
        return "has control characters or line breaks"
    if "/" in label or "\\" in label:
        return "holds a path separator"
    if label.strip() in (".", ".."):
        return "is . or .., which name folders of their own"
    return None


def _parse_section(name: str, cls: type, section: dict) -> tuple[list[str], dict]:
    hints = typing.get_type_hints(cls)
    declared = {f.name: f.metadata for f in dataclasses.fields(cls)}
    fields = list(declared)
    errors = [f"unknown key {f'{name}.{str(k)[:60]}'!r} (allowed: {', '.join(fields)})"
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
        errors += _type_errors(key, value, hints[field_name]) or _value_errors(key, value, declared[field_name])
        values[field_name] = value
    return errors, values


def _type_errors(key: str, value: Any, typ: Any) -> list[str]:
    origin = typing.get_origin(typ)
    if origin in (list, dict):  # list[str] or dict[str, str]: every item must be a str
        items = value if origin is list else [*value.keys(), *value.values()] if isinstance(value, dict) else None
        if isinstance(value, origin) and all(isinstance(v, str) for v in items):
            return []
        want = "a list of strings" if origin is list else "a mapping of strings to strings"
        return [f"{key} must be {want}, got {_shown.repr(value)}"]
    typ, optional = _unwrap_optional(typ)
    if optional and value is None:
        return []
    # bool is an int subclass in Python; `epochs: true` must not pass as 1
    if isinstance(value, typ) and not (isinstance(value, bool) and typ is not bool):
        if typ is float and not math.isfinite(value):  # YAML's .inf and .nan pass every comparison check
            return [f"{key} must be a finite number, got {value}"]
        return []
    shown = "null" if value is None else f"{_shown.repr(value)} ({type(value).__name__})"
    return [f"{key} must be {typ.__name__}{' or null' if optional else ''}, got {shown}"]


def _value_errors(key: str, value: Any, meta: dict) -> list[str]:
    """The declared choices and bounds (see ``param``) that ``value`` breaks."""
    if meta["choices"] and value not in meta["choices"]:
        return [f"{key} must be one of {', '.join(meta['choices'])}; got {_shown.repr(value)}"]
    low, high = meta["low"], meta["high"]
    if low is None or value is None:
        return []
    ok = (low < value if meta["low_open"] else low <= value) and (
        high is None or (value < high if meta["high_open"] else value <= high))
    return [] if ok else [f"{key} must be {allowed(meta)}, got {value}"]


def allowed(meta: dict) -> str:
    """The declared choices or bounds as words: ``one of a, b``, ``>= 1``, ``in (0, 1)``."""
    if meta["choices"]:
        return "one of " + ", ".join(meta["choices"])
    low, high = meta["low"], meta["high"]
    if low is None:
        return ""
    if high is None:
        return f"{'>' if meta['low_open'] else '>='} {low}"
    return f"in {'(' if meta['low_open'] else '['}{low}, {high}{')' if meta['high_open'] else ']'}"


def declarations() -> list[tuple[str, Any, dict]]:
    """``(dotted key, type, metadata)`` for every params.yaml key, in declaration order."""
    out = [(key, typ, field.metadata) for key, (typ, field) in TOP_LEVEL.items()]
    for name, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        out += [(f"{name}.{f.name}", hints[f.name], f.metadata) for f in dataclasses.fields(cls)]
    return out


def markdown_table() -> str:
    """The docs' table of every key, from the declarations (the values themselves are params.yaml's)."""
    rows = ["| key | type | meaning | allowed |", "|---|---|---|---|"]
    for key, typ, meta in declarations():
        rows.append(f"| `{key}` | {_type_name(typ)} | {meta['doc']} | {allowed(meta)} |")
    return "\n".join(rows) + "\n"


def _type_name(typ: Any) -> str:
    typ, optional = _unwrap_optional(typ)
    name = typ.__name__ if typing.get_origin(typ) is None else str(typ)
    return f"{name} or null" if optional else name


def _unwrap_optional(typ: Any) -> tuple[Any, bool]:
    """``Optional[X]`` -> ``(X, True)``; any other type -> ``(typ, False)``."""
    args = typing.get_args(typ)
    if type(None) not in args:
        return typ, False
    return next(a for a in args if a is not type(None)), True


TABLE_START, TABLE_END = "<!-- table: python -m pipeline.lib.params docs/parameters.md -->", "<!-- end of table -->"


def write_table(doc: Path) -> None:
    """Replace the table between the markers in ``doc`` with ``markdown_table()``."""
    text = doc.read_text()
    before, _, rest = text.partition(TABLE_START + "\n")
    _, _, after = rest.partition(TABLE_END)
    doc.write_text(before + TABLE_START + "\n" + markdown_table() + TABLE_END + after)


if __name__ == "__main__":  # python -m pipeline.lib.params [DOC]: print the table, or rewrite it in DOC
    import sys

    if len(sys.argv) > 1:
        write_table(Path(sys.argv[1]))
    else:
        print(markdown_table(), end="")

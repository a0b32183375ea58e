"""What the commands for people (predict, rank) take in and how they say what they could not use:
image arguments (files, folders, glob patterns), the labels and calibration found beside a
model, unreadable images named on stderr (the first few) and counted."""
from __future__ import annotations

import glob
import sys
from pathlib import Path
from typing import Callable, NoReturn

from pipeline.lib import artifacts, errors, images
from pipeline.lib.errors import StageError

CHUNK = 256  # images decoded at a time: bounds memory for big folders


def expand(patterns: list[str], command: str = "predict") -> tuple[list[Path], list[str]]:
    """(files to classify, patterns that matched nothing). Folders give their image files, sorted,
    read no deeper than ``artifacts.MAX_DEPTH`` folders (the deeper ones are named)."""
    files, unmatched = [], []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            deep: list[Path] = []
            files += images.image_files(path, deep)
            if deep:
                print(f"{command}: {pattern}: {len(deep)} folder(s) nested deeper than {artifacts.MAX_DEPTH} "
                      f"levels not read, e.g. {str(deep[0])[:200]}...", file=sys.stderr)
        elif path.is_file():
            files.append(path)
        elif path.exists():  # reading a FIFO would wait for a writer for ever
            print(f"{command}: {pattern}: not a regular file (a FIFO, device or socket): skipped", file=sys.stderr)
        elif glob.has_magic(pattern) and (matches := matched(pattern, command)):
            files += [Path(m) for m in matches if Path(m).is_file()]
        else:
            unmatched.append(pattern)
    return files, unmatched


def matched(pattern: str, command: str) -> list[str]:
    """``glob`` of ``pattern``, sorted. Its ``**`` recurses once per folder level: a tree deeper
    than Python's stack gives a one-line error instead of a RecursionError."""
    try:
        return sorted(glob.glob(pattern, recursive=True))
    except RecursionError as err:
        raise StageError(f"{pattern}: the folders below are nested too deep for a ** pattern; give the "
                         f"folder itself (read up to {artifacts.MAX_DEPTH} levels down)") from err


def beside(model: Path, given: Path | None, name: str) -> Path | None:
    """``given``, else ``name`` beside the model file or inside the SavedModel folder, if there."""
    return next((path for path in ([given] if given else [model.parent / name, model / name]) if path.is_file()), None)


def find_labels(model: Path, given: Path | None, name: str, command: str = "predict") -> Path:
    """``--labels``, else ``name`` beside the model file or inside the SavedModel folder."""
    if path := beside(model, given, name):
        return path
    raise SystemExit(f"{command}: no {name} beside {model} (the export folder has one); "
                     "pass --labels FILE (a labels.txt, or the split stage's labels.json)")


class Unreadable:
    """Unreadable inputs on stderr: the first ``SHOWN`` named with the reason, the rest counted,
    so ten thousand bad files make a few lines (every one is still in the CSV or JSON)."""
    SHOWN = 5

    def __init__(self, command: str):
        self.command, self.count = command, 0

    def add(self, path, error: str, note: str = "") -> None:
        self.count += 1
        if self.count <= self.SHOWN:
            print(f"{self.command}: {path}: not a readable image ({error[:300]}){note}", file=sys.stderr)

    def summary(self, total: int, where: str | None = None) -> None:
        if self.count > self.SHOWN:
            print(f"{self.command}: {self.count - self.SHOWN:,} more unreadable file(s) not named above "
                  f"({self.count:,} of {total:,} unreadable{'; every one is ' + where if where else ''})",
                  file=sys.stderr)


def read_calibration(model: Path, given: Path | None, unknown_threshold: float | None,
                     fail: Callable[[str], NoReturn]) -> dict:
    """{"temperature": to apply to the model's probabilities (1 where it is built in), "score":
    "known" or "probability" (what the threshold applies to), "unknown_threshold": float or None,
    "label_thresholds": one per label for a task: multi_label model, else None},
    from ``given`` (--calibration) or calibration.json beside ``model``, the threshold overridden by
    ``unknown_threshold`` (--unknown-threshold) unless None; with "build" and "found" (the
    calibration) where the model is a .keras file the export stage has not yet made deployable.
    A bad argument goes to ``fail`` (the command's argument parser's error)."""
    from pipeline.lib import inference

    path = beside(model, given, inference.CALIBRATION_FILE)
    if given and not path:
        fail(f"--calibration {given}: no such file")
    if path:
        from pipeline.lib import confidence

        try:
            found = confidence.read_calibration(path)
        except StageError as err:
            fail(f"{errors.describe(err)} (calibration.json comes from the calibrate or export stage)")
        temperature = 1.0 if found["temperature_in_model"] or found["unknown_score"] == "known" else float(
            found["temperature"])  # a known score's temperature is built into the model (export, or ``build``)
        threshold, score = float(found["unknown_threshold"]), found["unknown_score"]
        cut = found.get("label_thresholds")
    else:
        temperature, threshold, score, cut = 1.0, None, "probability", None
    if unknown_threshold is not None:
        if not 0 <= unknown_threshold <= 1:
            fail("--unknown-threshold must be between 0 and 1")
        threshold = unknown_threshold or None
    calibration = {"temperature": temperature, "unknown_threshold": threshold, "score": score, "label_thresholds": cut}
    if score == "known" and not found["temperature_in_model"]:
        if model.suffix != ".keras":
            fail(f"{path} is the calibrate stage's, for a .keras model; {model} is another format: "
                         "use the calibration.json of its export folder")
        calibration.update(build=True, found=found)
    return calibration


def calibrate(probs, calibration: dict):
    """The model's probabilities at the calibration's temperature (unchanged at 1)."""
    if calibration["temperature"] == 1.0 or not probs.size:
        return probs
    from pipeline.lib import confidence

    return confidence.calibrated(confidence.logits_of(probs), calibration["temperature"]).astype("float32")

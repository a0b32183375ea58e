"""The decisions file ``python -m pipeline review`` writes and ``relabel --decisions`` applies.

One row per image: ``file`` (as the audit's reports name it), ``report`` (the issue type it was
reviewed under), ``decision`` and, for ``relabel``, the chosen ``label``. A plain CSV a person
can read in a pull request, and a file nothing takes on trust: relabel checks every row as it
checks --accept and --reject.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable

from pipeline.lib import artifacts
from pipeline.lib.errors import StageError
from pipeline.lib.schemas import read_csv

REPORTS = ["label_issues", "near_duplicates", "outliers", "quality"]  # the audit's issue types, in page order
DECISIONS = ["accept", "relabel", "quarantine", "keep"]
FIELDS = ["file", "report", "decision", "label"]
KIND = artifacts.starts_with("a decisions file", ",".join(FIELDS).encode())  # what review may replace


def read(path: Path) -> dict[str, dict]:
    """The rows by file, each with a known report and decision (and a label for relabel)."""
    rows = read_csv(path, FIELDS)
    out = {}
    for line, row in enumerate(rows, start=2):
        if row["report"] not in REPORTS or row["decision"] not in DECISIONS:
            raise StageError(f"{path} line {line}: report {row['report']!r} / decision {row['decision']!r} unknown "
                             f"(reports: {', '.join(REPORTS)}; decisions: {', '.join(DECISIONS)})")
        if (row["decision"] == "relabel") != bool(row["label"]):
            raise StageError(f"{path} line {line}: a label goes with the decision relabel, and only with it")
        if row["file"] in out:
            raise StageError(f"{path} line {line}: {row['file']} decided twice")
        out[row["file"]] = row
    return out


def write(path: Path, rows: Iterable[dict]) -> None:
    """Written whole, atomically, and never over a file that is not a decisions file
    (``artifacts.atomic_file``)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: r["file"]))
    with artifacts.atomic_file(path, KIND) as tmp:
        tmp.write_text(text.getvalue(), encoding="utf-8")

"""Apply reviewed audit findings: ``python -m pipeline relabel CSV [--accept FILE...] [--reject FILE...]``.

CSV is one of the audit's reports (reports/audit/label_issues.csv, near_duplicates.csv,
outliers.csv, quality.csv); FILE is a value of its ``file`` column, as reviewed.
``--accept`` moves an image into the class folder of its ``suggested`` label (the folder
beside its own, e.g. ``train/shirt/x.jpg`` -> ``train/t-shirt/x.jpg``); ``--accept-all``
does so for every row that suggests a label. ``--reject`` moves an image out of the data
into ``--quarantine`` (default ``quarantine/``, beside the source: outside the tracked data,
and kept, not deleted), under the same relative path. ``--dry-run`` prints the moves only.

Everything is checked before anything moves: a file outside the images folder, missing, not
in the CSV, or whose move would overwrite another file stops the command, naming it. The
images folder is the ingest stage's ``--source`` in dvc.yaml (``--images`` to give another);
it must be a folder of class folders (labels from a CSV are edited in that CSV). Afterwards,
``dvc add <images>`` records the new version, ``dvc diff`` shows exactly these moves, and the
next ``dvc repro`` reruns from ingest (docs/team.md#fixing-what-the-audit-found).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from pipeline import check
from pipeline.lib import artifacts
from pipeline.lib.images import read_csv
from pipeline.lib.artifacts import StageError


def plan(rows: dict[str, dict], images: Path, quarantine: Path, accept: list[str],
         reject: list[str]) -> list[tuple[Path, Path]]:
    """``(from, to)`` of every move, each checked; a StageError naming the first problem."""
    root, moves = images.resolve(), []
    if quarantine.resolve().is_relative_to(root):
        raise StageError(f"--quarantine {quarantine} is inside {images}: rejected images must leave the "
                         "tracked data")
    for name, action in [(f, "accept") for f in accept] + [(f, "reject") for f in reject]:
        path = (images / name).resolve()
        if not path.is_relative_to(root) or path == root:
            raise StageError(f"{name}: outside {images}; relabel moves only images inside it")
        if name not in rows:
            raise StageError(f"{name}: not a row of the CSV; give its `file` column as written")
        if not path.is_file():
            raise StageError(f"{name}: no such image in {images} (already moved? run `dvc repro` to refresh "
                             "the audit)")
        if action == "accept":
            row = rows[name]
            if not row.get("suggested"):
                raise StageError(f"{name}: its row suggests no label; --reject it instead, or leave it")
            if path.parent.name != row["label"]:
                raise StageError(f"{name}: its folder {path.parent.name!r} is not its label {row['label']!r}; "
                                 "labels from a CSV (ingest.labels_csv) are corrected in that CSV")
            target = path.parent.parent / row["suggested"] / path.name
        else:
            target = quarantine.resolve() / path.relative_to(root)
        if target.exists() or target in [t for _, t in moves]:
            raise StageError(f"{name}: {target} already exists; rename one of them first")
        moves.append((path, target))
    return moves


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline relabel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", type=Path, help="an audit report: reports/audit/<issue>.csv")
    parser.add_argument("--accept", nargs="+", action="extend", default=[], metavar="FILE",
                        help="move to the suggested label")
    parser.add_argument("--accept-all", action="store_true", help="accept every row that suggests a label")
    parser.add_argument("--reject", nargs="+", action="extend", default=[], metavar="FILE",
                        help="move out into --quarantine")
    parser.add_argument("--images", type=Path, help="the images folder (default: ingest's --source in dvc.yaml)")
    parser.add_argument("--quarantine", type=Path, help="where rejected images go (default: quarantine/ beside it)")
    parser.add_argument("--dry-run", action="store_true", help="print the moves, move nothing")
    args = parser.parse_args(argv)
    images = args.images or Path(check.ingest_source(Path.cwd()))
    quarantine = args.quarantine or images.parent / "quarantine"
    if not images.is_dir():
        raise StageError(f"{images} is not a folder: relabel edits a folder of class folders "
                         "(unpack an archive source and `dvc add` the folder first)")
    try:
        rows = {r["file"]: r for r in read_csv(args.csv)}
    except (OSError, KeyError) as err:
        raise StageError(f"{args.csv}: not an audit report with a `file` column ({err})") from err
    accept = list(args.accept) + ([f for f, r in rows.items() if r.get("suggested")] if args.accept_all else [])
    if not accept and not args.reject:
        raise StageError("nothing to do: give --accept FILE..., --accept-all or --reject FILE...")
    moves = plan(rows, images, quarantine, accept, args.reject)
    cwd = Path.cwd().resolve()
    for source, target in moves:
        shown = [p.relative_to(cwd) if p.is_relative_to(cwd) else p for p in (source, target)]
        print(f"{'would move' if args.dry_run else 'moved'} {shown[0]} -> {shown[1]}")
        if not args.dry_run:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
    if not args.dry_run:
        print(f"{len(moves)} image(s) moved. Next: `dvc add {images}`, `dvc diff` to review, `dvc repro`.")
    return 0


if __name__ == "__main__":
    artifacts.run(lambda: sys.exit(main()))

"""Apply reviewed audit findings: ``python -m pipeline relabel CSV [--accept FILE...] [--reject FILE...]``.

CSV is one of the audit's reports (reports/audit/label_issues.csv, near_duplicates.csv,
outliers.csv, quality.csv); FILE is a value of its ``file`` column, as reviewed.
``--decisions FILE`` applies what ``python -m pipeline review`` saved instead (accept,
relabel to a chosen class, quarantine, keep), with the same checks.
``--accept`` moves an image into the class folder of its ``suggested`` label (the folder
beside its own, e.g. ``train/shirt/x.jpg`` -> ``train/t-shirt/x.jpg``); ``--accept-all``
does so for every row that suggests a label. ``--reject`` moves an image out of the data
into ``--quarantine`` (default ``quarantine/``, beside the source: outside the tracked data,
and kept, not deleted), under the same relative path. ``--dry-run`` prints the moves only.

Everything is checked before anything moves, every path resolved (symbolic links included):
a file outside the images folder, missing, not in the CSV, or whose move would overwrite
another file stops the command, naming it; so does a destination outside the images folder
(or the quarantine), a suggested label that is not one of the data's classes (``--new-class
LABEL`` allows a new one), and a name with control characters or an absolute path. The
images folder is the ingest stage's ``--source`` in dvc.yaml (``--images`` to give another);
it must be a folder of class folders (labels from a CSV are edited in that CSV). Afterwards,
``dvc add <images>`` records the new version, ``dvc diff`` shows exactly these moves, and the
next ``dvc repro`` reruns from ingest (docs/team.md#fixing-what-the-audit-found).

With ``task: multi_label`` in ./params.yaml the labels live in the labels CSV
(``ingest.labels_csv``), and relabel edits it: ``--add FILE LABEL`` and
``--remove FILE LABEL`` (FILE as the manifest names it, e.g. from
reports/evaluate/predictions.csv) change one label of an image, ``--reject
FILE`` moves the image into the quarantine and drops its row. No other byte of
the CSV changes; every change is checked first.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

from pipeline.lib import cli, decisions, dvcyaml, multilabel, params, sources
from pipeline.lib.schemas import read_csv
from pipeline.lib.errors import StageError


def plan(rows: dict[str, dict], images: Path, quarantine: Path, accept: list[str], reject: list[str],
         new_classes: list[str] = (), chosen: dict[str, str] | None = None) -> list[tuple[Path, Path]]:
    """``(from, to)`` of every move, each checked; a StageError naming the first problem.

    Every path is resolved, symbolic links included, before it is trusted: an accepted image
    lands in a class folder beside its own, inside the images folder, under one of the data's
    classes (or a ``new_classes`` name), under its row's ``suggested`` label or the label
    ``chosen`` gives it; a rejected one lands inside the quarantine. The CSV is
    a file in the repository that a pull request can change, so nothing in it is taken on trust."""
    root, moves = images.resolve(), []
    held = quarantine.resolve()
    if held.is_relative_to(root) or root.is_relative_to(held):
        raise StageError(f"--quarantine {quarantine} {'is inside' if held.is_relative_to(root) else 'holds'} "
                         f"{images}: rejected images must leave the tracked data")
    classes = {folder.name for _, folder in sources.class_folders(root)} | set(new_classes)
    for name, action in [(f, "accept") for f in accept] + [(f, "reject") for f in reject]:
        if problem := unsafe(name):
            raise StageError(f"{name!r}: the file {problem}; relabel moves only files named plainly")
        path = (images / name).parent.resolve() / Path(name).name  # the file itself may be a link: moved as one
        if not path.is_relative_to(root) or path.parent == root:
            raise StageError(f"{name}: outside {images}'s class folders; relabel moves only images inside them")
        if name not in rows:
            raise StageError(f"{name}: not a row of the CSV; give its `file` column as written")
        if not path.is_file():
            raise StageError(f"{name}: no such image in {images} (already moved? run `dvc repro` to refresh "
                             "the audit)")
        if action == "accept":
            row = rows[name]
            label = (chosen or {}).get(name) or row.get("suggested") or ""
            if not label:
                raise StageError(f"{name}: its row suggests no label; --reject it instead, or leave it")
            if label == row.get("label"):
                raise StageError(f"{name}: it is labelled {label!r} already")
            if path.parent.name != row.get("label"):
                raise StageError(f"{name}: its folder {path.parent.name!r} is not its label {row.get('label')!r}; "
                                 "labels from a CSV (ingest.labels_csv) are corrected in that CSV")
            if problem := params.label_problem(label):
                raise StageError(f"{name}: its suggested label {label!r} {problem}; not a class name")
            if label not in classes:
                raise StageError(f"{name}: its suggested label {label!r} is not one of the data's classes ("
                                 f"{', '.join(sorted(classes)[:20])}); --new-class {label} makes it one")
            target = (path.parent.parent / label).resolve() / path.name
            if target.parent.parent != path.parent.parent:  # a class folder that is a link to elsewhere
                raise StageError(f"{name}: the folder of {label!r} resolves to {target.parent}, not a class folder "
                                 f"beside {path.parent}; relabel moves images only between class folders")
        else:
            target = (held / path.relative_to(root)).parent.resolve() / path.name
            if not target.is_relative_to(held):
                raise StageError(f"{name}: its place in the quarantine resolves to {target}, outside {held}")
        if target.exists() or target.is_symlink() or target in [t for _, t in moves]:
            raise StageError(f"{name}: {target} already exists; rename one of them first")
        moves.append((path, target))
    return moves


def edit_labels_csv(csv_file: Path, root: Path, p, changes: dict[str, list[tuple[str, str]]],
                    dropped: set[str]) -> int:
    """task: multi_label: in the labels CSV, add or remove one label of each image of ``changes``
    ({path under ``root``: [("+" or "-", label), ...]}) and drop the rows of ``dropped`` (images moved
    to the quarantine); every other byte of the file stays as it was, so its diff in review is
    exactly these rows. Checked first, written atomically; returns the rows changed."""
    data = csv_file.read_bytes()  # not read_text: its universal newlines would turn \r\n into \n
    text, bom = data.decode("utf-8-sig"), data.startswith(b"\xef\xbb\xbf")
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    start, spans = reader.line_num, {}  # row -> (its first line, the line after it, its cells)
    for cells in reader:
        spans[len(spans)] = (start, reader.line_num, cells)
        start = reader.line_num
    column = {name: i for i, name in enumerate(header)}
    wanted, out, done = set(changes) | dropped, {}, set()
    for first, end, cells in spans.values():
        if len(cells) != len(header):
            continue
        path = (root / cells[column[p.csv_image_column]].strip()).resolve()
        name = path.relative_to(root.resolve()).as_posix() if path.is_relative_to(root.resolve()) else None
        if name not in wanted:
            continue
        done.add(name)
        if name in dropped:
            out[first] = (end, "")
            continue
        for op, label in changes[name]:
            if p.csv_label_columns:
                if label not in column:
                    raise StageError(f"{name}: {label!r} is not a label column of {csv_file}; add the column first")
                cells[column[label]] = "1" if op == "+" else "0"
            else:
                cell = cells[column[p.csv_label_column]]
                given = [x.strip() for x in cell.split(p.label_separator) if x.strip()]
                kept = [x for x in given if x != label]
                cells[column[p.csv_label_column]] = p.label_separator.join(kept + [label] * (op == "+"))
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator=newline).writerow(cells)
        out[first] = (end, buffer.getvalue())
    if missing := sorted(wanted - done):
        raise StageError(f"{missing[0]}: no row of {csv_file} names it (ingest.csv_image_column "
                         f"{p.csv_image_column!r}); give FILE as reports/evaluate/predictions.csv names it")
    result, i = [], 0
    while i < len(lines):
        if i in out:
            result.append(out[i][1])
            i = out[i][0]
        else:
            result.append(lines[i])
            i += 1
    handle, name = tempfile.mkstemp(prefix=f".{csv_file.name}.", dir=csv_file.parent)  # a new name: clobbers nothing
    tmp = Path(name)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write((b"\xef\xbb\xbf" if bom else b"") + "".join(result).encode("utf-8"))
        os.chmod(tmp, csv_file.stat().st_mode & 0o7777)  # mkstemp's file is private; keep the CSV's mode
        os.replace(tmp, csv_file)
    finally:
        tmp.unlink(missing_ok=True)
    return len(done)


def label_changes(add: list[list[str]], remove: list[list[str]], labels: set[str],
                  new_classes: list[str]) -> dict[str, list[tuple[str, str]]]:
    """task: multi_label: ``--add FILE LABEL`` and ``--remove FILE LABEL`` as {FILE: [("+" or "-",
    LABEL), ...]}, each checked: a plain file name, a label name, an added label one of the data's
    (or a ``new_classes`` one)."""
    changes: dict[str, list[tuple[str, str]]] = {}
    for op, pairs in (("+", add), ("-", remove)):
        for name, label in pairs:
            if problem := unsafe(name):
                raise StageError(f"{name!r}: the file {problem}; relabel edits only files named plainly")
            if problem := params.label_problem(label):
                raise StageError(f"{name}: label {label!r} {problem}; not a label")
            if op == "+" and label not in labels | set(new_classes):
                raise StageError(f"{name}: label {label!r} is not one of the data's labels "
                                 f"({', '.join(sorted(labels)[:20])}); --new-class {label} makes it one")
            changes.setdefault(name, []).append((op, label))
    return changes


def unsafe(text: str) -> str | None:
    """Why ``text`` (the CSV's ``file`` column) cannot name an image to move, or None: control
    characters (a NUL byte, a line break) or an absolute path. Labels go through
    ``params.label_problem``, as everywhere else."""
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return "has control characters"
    if Path(text).is_absolute():
        return "is an absolute path"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline relabel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", type=Path, nargs="?", help="an audit report: reports/audit/<issue>.csv")
    parser.add_argument("--accept", nargs="+", action="extend", default=[], metavar="FILE",
                        help="move to the suggested label")
    parser.add_argument("--accept-all", action="store_true", help="accept every row that suggests a label")
    parser.add_argument("--reject", nargs="+", action="extend", default=[], metavar="FILE",
                        help="move out into --quarantine")
    parser.add_argument("--add", nargs=2, action="append", default=[], metavar=("FILE", "LABEL"),
                        help="task: multi_label: add LABEL to FILE's labels in the labels CSV")
    parser.add_argument("--remove", nargs=2, action="append", default=[], metavar=("FILE", "LABEL"),
                        help="task: multi_label: remove LABEL from FILE's labels in the labels CSV")
    parser.add_argument("--new-class", nargs="+", action="extend", default=[], metavar="LABEL",
                        help="a label that is not yet a class folder, which --accept may create")
    parser.add_argument("--images", type=Path, help="the images folder (default: ingest's --source in dvc.yaml)")
    parser.add_argument("--quarantine", type=Path, help="where rejected images go (default: quarantine/ beside it)")
    parser.add_argument("--decisions", type=Path, metavar="FILE",
                        help="apply the decisions `python -m pipeline review` saved (instead of CSV and FILEs)")
    parser.add_argument("--audit", type=Path,
                        help="with --decisions: the audit's reports folder (default: the audit stage's --out in dvc.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print the moves, move nothing")
    args = parser.parse_args(argv)
    images = args.images or Path(dvcyaml.source())
    quarantine = args.quarantine or images.parent / "quarantine"
    if Path(params.PARAMS_FILE).is_file():  # the project's task; without params.yaml, class folders
        p = params.load(["task", "ingest"])
        if p.task == "multi_label":
            return multi_label(args, images, quarantine, p.ingest)
    if args.decisions:
        if args.csv or args.accept or args.accept_all or args.reject or args.add or args.remove:
            raise StageError("--decisions FILE applies the decisions alone: give no CSV, --accept, --reject, "
                             "--add or --remove with it")
        return apply_decisions(args, images, quarantine)
    if args.csv is None or args.add or args.remove:
        raise StageError("give the audit report's CSV; --add and --remove are for task: multi_label")
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
    for label in args.new_class:
        if problem := params.label_problem(label):
            raise StageError(f"--new-class {label!r} {problem}; not a class name")
    return move(plan(rows, images, quarantine, accept, args.reject, args.new_class), images, args.dry_run)


def apply_decisions(args, images: Path, quarantine: Path) -> int:
    """``--decisions FILE``: each row's ``accept`` (its report's suggested label), ``relabel`` (its
    ``label``) or ``quarantine``, checked as the same --accept or --reject would be; ``keep`` moves
    nothing."""
    if not images.is_dir():
        raise StageError(f"{images} is not a folder: relabel edits a folder of class folders")
    decided = decisions.read(args.decisions)
    audit = args.audit or Path(dvcyaml.argument("audit", "--out"))
    reports = {r: {row["file"]: row for row in read_csv(audit / f"{r}.csv")}
               for r in sorted({d["report"] for d in decided.values()})}  # each report read once
    rows, accept, reject, chosen = {}, [], [], {}
    for name, d in decided.items():
        report = reports[d["report"]]
        if name in report:
            rows[name] = report[name]
        if d["decision"] in ("accept", "relabel"):
            accept.append(name)
            if d["decision"] == "relabel":
                chosen[name] = d["label"]
        elif d["decision"] == "quarantine":
            reject.append(name)
    kept = len(decided) - len(accept) - len(reject)
    if kept:
        print(f"{kept} image(s) kept as they are")
    return move(plan(rows, images, quarantine, accept, reject, args.new_class, chosen), images, args.dry_run)


def move(moves: list[tuple[Path, Path]], images: Path, dry_run: bool) -> int:
    """Carry out (or with ``dry_run`` print) the checked ``moves``."""
    cwd = Path.cwd().resolve()
    for source, target in moves:
        shown = [p.relative_to(cwd) if p.is_relative_to(cwd) else p for p in (source, target)]
        print(f"{'would move' if dry_run else 'moved'} {shown[0]} -> {shown[1]}")
        if not dry_run:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
    if not dry_run:
        print(f"{len(moves)} image(s) moved. Next: `dvc add {images}`, `dvc diff` to review, `dvc repro`.")
    return 0


def multi_label(args, images: Path, quarantine: Path, p) -> int:
    """task: multi_label: ``--add``/``--remove FILE LABEL`` edit the labels CSV; ``--reject FILE``
    moves the image into the quarantine and drops its row."""
    if args.decisions:
        raise StageError("--decisions is for single-label class folders (review refuses task: multi_label)")
    if args.accept or args.accept_all:
        raise StageError("with task: multi_label the audit flags no label issues to accept "
                         "(docs/multilabel.md#the-audit-and-relabel): give --add FILE LABEL or --remove FILE LABEL")
    if not (args.add or args.remove or args.reject):
        raise StageError("nothing to do: give --add FILE LABEL, --remove FILE LABEL or --reject FILE...")
    if not p.labels_csv:
        raise StageError("task: multi_label reads its labels from ingest.labels_csv, which is not set")
    csv_file = sources.dataset_root(images) / p.labels_csv
    root = (csv_file.parent / p.image_dir) if p.image_dir else csv_file.parent
    if not csv_file.is_file():
        raise StageError(f"ingest.labels_csv {p.labels_csv!r}: no file {csv_file}")
    candidates, _ = sources.from_csv(csv_file, root.resolve(), p, "multi_label")
    labels = {label for r in candidates for label in multilabel.decode(r["label"])}
    changes = label_changes(args.add, args.remove, labels, args.new_class)
    moves = []
    if args.reject:
        if args.csv is None:
            raise StageError("--reject takes the files of an audit report: give its CSV (reports/audit/<issue>.csv)")
        moves = plan({r["file"]: r for r in read_csv(args.csv)}, root, quarantine, [], args.reject)
    for name, ops in changes.items():
        print(f"{'would change' if args.dry_run else 'changed'} {name}: "
              + ", ".join(f"{'add' if op == '+' else 'remove'} {label}" for op, label in ops))
    for source, target in moves:
        print(f"{'would move' if args.dry_run else 'moved'} {source} -> {target} (its row dropped from {csv_file.name})")
    if args.dry_run:
        return 0
    dropped = {source.relative_to(root.resolve()).as_posix() for source, _ in moves}
    edited = edit_labels_csv(csv_file, root, p, changes, dropped)
    for source, target in moves:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, target)
    print(f"{edited} row(s) of {csv_file} changed, {len(moves)} image(s) moved. Next: `dvc add {images}`, "
          "`dvc diff` to review, `dvc repro`.")
    return 0


if __name__ == "__main__":
    cli.run(lambda: sys.exit(main()))

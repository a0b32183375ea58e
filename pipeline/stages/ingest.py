"""ingest: the source (data/images) -> data/manifest.csv + reports/ingest.json.

The source is a DVC-tracked folder of class folders (optionally below train/,
validation/ or val/, test/) or a .zip/.tar archive of one (``dvc import-url``
keeps it as a file), optionally with a labels CSV. On the command line it may
also be an http(s) URL or ``keras:<dataset>``, which DVC does not track. Every
file is fully decoded; what is not a readable image is skipped. Byte-identical
images are one image: kept once under one label, excluded when they carry two
labels. Everything skipped is listed with its reason in the report, counted
per class. The source is never modified, and never copied: the manifest
records each kept image (its path inside the source, label, the source's own
split, content hash, size), and later stages read the source through it,
checking each image against its hash.
"""
from __future__ import annotations

import collections
import logging
import os
import time
from pathlib import Path

from tqdm import tqdm

from pipeline.lib import artifacts, cli, images, multilabel, params, pools, schemas, sources
from pipeline.lib.errors import StageError

PARAMS = ["ingest", "task"]
log = logging.getLogger("pipeline.stages.ingest")


def deduplicate(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """One row per distinct content; a copy in an evaluation split wins over a training copy."""
    groups = collections.defaultdict(list)
    for row in rows:
        groups[row["sha256"]].append(row)
    kept, dropped = [], []
    for group in groups.values():
        group.sort(key=lambda r: (schemas.SPLIT_PRIORITY[r["split"]], r["path"]))
        labels = sorted({r["label"] for r in group})
        if len(labels) > 1:
            dropped += [{**r, "reason": "same image under several labels",
                         "detail": ", ".join(x["path"] for x in group)} for r in group]
        else:
            kept.append(group[0])
            dropped += [{**r, "reason": "duplicate image", "detail": f"same bytes as {group[0]['path']}"}
                        for r in group[1:]]
    return sorted(kept, key=lambda r: r["path"]), dropped


# The report is git-tracked: whatever the source holds, it lists every count but only the first
# EXAMPLES skipped files of each reason, and per class only labels some image was kept under.
EXAMPLES = 50
NO_LABEL = "(no label)"  # multi_label: images that carry none of the labels


def summarize(source: str, kept: list[dict], skipped: list[dict], version: str, multi: bool = False) -> dict:
    per_class: dict = collections.defaultdict(lambda: {"kept": 0, "skipped": collections.Counter()})
    for row in kept:  # multi_label: under each of its labels, or "(no label)"
        for label in (multilabel.decode(row["label"]) or [NO_LABEL]) if multi else [row["label"]]:
            per_class[label]["kept"] += 1
    other = collections.Counter()  # skips under labels no kept image has: a typo'd CSV can hold millions
    for row in skipped:
        label = row["label"] or "(no class)"
        if multi and row["label"]:  # counted under its first label
            label = multilabel.decode(row["label"])[0]
        (per_class[label]["skipped"] if label in per_class or label == "(no class)" else other)[row["reason"]] += 1
    by_reason = collections.Counter(r["reason"] for r in skipped)
    shown = collections.Counter()
    examples = []
    for r in skipped:
        shown[r["reason"]] += 1
        if shown[r["reason"]] <= EXAMPLES:
            examples.append({k: str(r[k])[:300] for k in ("path", "label", "reason", "detail") if r.get(k)})
    report = {
        "source": source, "data_version": version, "kept": len(kept), "skipped": len(skipped),
        "skipped_by_reason": dict(sorted(by_reason.items())),
        "per_class": {k: {"kept": v["kept"], "skipped": dict(sorted(v["skipped"].items()))}
                      for k, v in sorted(per_class.items())},
        "skipped_files": examples,
    }
    if other:
        report["per_class"]["(labels with no kept image)"] = {"kept": 0, "skipped": dict(sorted(other.items()))}
    if len(examples) < len(skipped):
        report["skipped_files_note"] = (f"the first {EXAMPLES} files of each reason; "
                                        f"{len(skipped) - len(examples):,} more are counted above")
    return report


def main() -> None:
    args = cli.start(__doc__, "source", "manifest", "report", writes=("manifest", "report"))
    source = str(args.source)  # a path, or a URL / keras:<dataset> for one-off runs
    p = params.load(PARAMS)
    multi = p.task == "multi_label"
    folder, root, candidates, skipped = sources.open_source(source, p.ingest, p.task)
    # Paths inside the source (the folder later stages locate), not inside the dataset root in it
    prefix = Path(os.path.relpath(root, folder))
    log.info("%s: %d candidate files, decoding each one", root, len(candidates))

    readable, started = [], time.perf_counter()
    examined = pools.process_map(images.examine, [root / entry["path"] for entry in candidates])
    for entry, found in tqdm(zip(candidates, examined), total=len(candidates), desc="ingest", unit="file"):
        if "reason" in found:
            skipped.append({**entry, **found})
        else:
            readable.append({**entry, "path": (prefix / entry["path"]).as_posix(), **found})
    seconds = time.perf_counter() - started
    log.info("decoded and hashed %d images in %.1f s (%.0f images/s)", len(candidates), seconds,
             len(candidates) / max(seconds, 1e-9))
    kept, duplicates = deduplicate(readable)
    skipped += duplicates
    labels = sorted(multilabel.counts(kept) if multi else {row["label"] for row in kept})
    if len(labels) < (1 if multi else 2):
        hint = ""
        if not p.ingest.labels_csv and (tables := sorted(f.name for f in root.glob("*.csv"))):
            hint = f"; {root} holds {', '.join(tables)}: set ingest.labels_csv to read the labels from it"
        elif skipped:  # why nothing was kept: the commonest reasons
            reasons = collections.Counter(s["reason"] for s in skipped).most_common(3)
            hint = "; skipped: " + "; ".join(f"{n:,} {reason}" for reason, n in reasons)
        raise StageError(f"source {source!r}: found {len(labels)} class(es) with "
                         f"readable images under {root}; need at least {1 if multi else 2}{hint}")
    with artifacts.atomic_file(args.manifest) as tmp:
        schemas.write_csv(tmp, kept, schemas.MANIFEST_FIELDS)
        # The data version: every kept image's path, label and content, in one digest.
        version = images.sha256_file(tmp)[:16]

    report = summarize(source, kept, skipped, version, multi)
    artifacts.write_json(args.report, report)
    log.info("kept %d images in %d classes: %s", len(kept), len(labels),
             ", ".join(f"{k} {v['kept']}" for k, v in report["per_class"].items() if v["kept"]))
    for reason, count in report["skipped_by_reason"].items():
        log.warning("skipped %d: %s (details in %s)", count, reason, args.report)


if __name__ == "__main__":
    cli.run(main)

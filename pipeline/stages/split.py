"""split: data/manifest.csv -> data/split/{train,val,test}.csv + labels.json + reports/split.json.

Labels are first dropped, merged and checked for size (split.drop_labels,
split.merge_labels, split.min_images_per_class, split.small_classes). Then
``auto`` keeps the source's own train/validation/test folders when it has
them, else makes a stratified split. Ingest already made every image unique,
so no image can sit in two splits.
"""
from __future__ import annotations

import collections
import logging
from types import SimpleNamespace

from sklearn.model_selection import train_test_split

from pipeline.lib import artifacts, images, params
from pipeline.lib.artifacts import StageError

PARAMS = ["split", "seed"]
FIELDS = ["path", "label", "sha256"]  # the hash: later stages check each image they read against it
OTHER = "other"  # where split.small_classes: merge puts the small classes
log = logging.getLogger("pipeline.stages.split")


def relabel(rows: list[dict], p: SimpleNamespace) -> tuple[list[dict], dict[str, str]]:
    """Apply drop_labels, merge_labels and the small-class rule; return rows and what happened per label."""
    changes = {}
    for old, new in p.merge_labels.items():
        changes[old] = f"merged into {new}"
    rows = [{**r, "label": p.merge_labels.get(r["label"], r["label"])} for r in rows]
    dropped = set(p.drop_labels)
    changes.update({label: "dropped (split.drop_labels)" for label in dropped})
    rows = [r for r in rows if r["label"] not in dropped]
    for rule in (p.small_classes, "drop"):  # after a merge, "other" itself may still be small
        counts = collections.Counter(r["label"] for r in rows)
        small = sorted(label for label, n in counts.items() if n < p.min_images_per_class)
        if not small:
            break
        described = ", ".join(f"{label} ({counts[label]})" for label in small)
        if rule == "fail":
            raise StageError(f"classes with fewer than split.min_images_per_class="
                             f"{p.min_images_per_class} images: {described}. Add images, list them in "
                             "split.drop_labels, or set split.small_classes to drop or merge")
        log.warning("small classes (< %d images) %s: %s", p.min_images_per_class,
                    "dropped" if rule == "drop" else f"merged into {OTHER!r}", described)
        for label in small:
            changes[label] = f"{'dropped' if rule == 'drop' else 'merged into ' + OTHER} ({counts[label]} images)"
        rows = [r for r in rows if r["label"] not in small] if rule == "drop" else \
            [{**r, "label": OTHER if r["label"] in small else r["label"]} for r in rows]
    return rows, changes


def stratified(rows: list[dict], fraction: float, seed: int, what: str) -> tuple[list[dict], list[dict]]:
    """Split off ``fraction`` of ``rows`` keeping class proportions; clear error when impossible."""
    counts = collections.Counter(r["label"] for r in rows)
    try:
        rest, part = train_test_split(rows, test_size=fraction, random_state=seed,
                                      stratify=[r["label"] for r in rows])
    except ValueError as err:
        fewest = ", ".join(f"{k} ({v})" for k, v in sorted(counts.items(), key=lambda kv: kv[1])[:3])
        raise StageError(f"cannot split off {what} ({fraction:g} of {len(rows)} images, "
                         f"{len(counts)} classes) keeping every class on both sides: {err}. "
                         f"Classes with fewest images: {fewest}. Raise split.min_images_per_class, "
                         "add images, or change split.val_fraction / split.test_fraction") from err
    return sorted(rest, key=lambda r: r["path"]), sorted(part, key=lambda r: r["path"])


def main() -> None:
    args = artifacts.start(__doc__, "manifest", "out", "report")
    p = params.load(PARAMS)
    rows, changes = relabel(images.read_csv(args.manifest), p.split)
    has_predefined = any(r["split"] for r in rows)
    strategy = p.split.strategy
    if strategy == "auto":
        strategy = "predefined" if has_predefined else "stratified"
    if strategy == "predefined" and not has_predefined:
        raise StageError("split.strategy is 'predefined' but the source has no train/validation/test "
                         "folders (or split column); use 'auto' or 'stratified'")
    log.info("strategy: %s", strategy)

    if strategy == "predefined":
        parts = {s: [r for r in rows if r["split"] == s] for s in images.SPLITS}
        if not parts["train"]:
            raise StageError("the source's own split has no training images")
        if not parts["test"]:  # a source with only train/ and validation/: carve the test split
            parts["train"], parts["test"] = stratified(parts["train"], p.split.test_fraction, p.seed, "test")
        if not parts["val"]:
            parts["train"], parts["val"] = stratified(parts["train"], p.split.val_fraction, p.seed, "val")
    else:
        train_val, test = stratified(rows, p.split.test_fraction, p.seed, "test")
        val_share = p.split.val_fraction / (1 - p.split.test_fraction)
        train, val = stratified(train_val, val_share, p.seed, "val")
        parts = {"train": train, "val": val, "test": test}

    labels = sorted({r["label"] for r in rows})
    if len(labels) < 2:
        raise StageError(f"{len(labels)} class(es) left after split.drop_labels / merge_labels / "
                         "min_images_per_class; need at least 2")
    for name, part in parts.items():
        missing = sorted(set(labels) - {r["label"] for r in part})
        if missing:
            raise StageError(f"the {name} split has no images of class(es) {', '.join(missing)}")
    with artifacts.atomic_dir(args.out) as tmp:
        for name, part in parts.items():
            images.write_csv(tmp / f"{name}.csv", part, FIELDS)
        artifacts.write_json(tmp / "labels.json", labels)
    counts = {name: dict(sorted(collections.Counter(r["label"] for r in part).items()))
              for name, part in parts.items()}
    artifacts.write_json(args.report, {"strategy": strategy, "labels": labels, "label_changes": changes,
                                       "images": {n: len(part) for n, part in parts.items()},
                                       "per_class": counts})
    log.info("%d classes; train %d, val %d, test %d images", len(labels),
             *(len(parts[s]) for s in images.SPLITS))


if __name__ == "__main__":
    artifacts.run(main)

"""split: data/raw/manifest.csv -> data/split/{train,val,test}.csv + labels.json.

``auto`` keeps the source's own train/validation/test folders when it has
them, else makes a stratified split. Images with identical bytes are one
image: duplicates under one label are kept once, and the same bytes under two
labels are excluded as a conflict, so no image can sit in two splits.
"""
from __future__ import annotations

import collections
import logging

from sklearn.model_selection import train_test_split

from pipeline import artifacts, images, params
from pipeline.artifacts import StageError

PARAMS = ["split", "seed"]
FIELDS = ["path", "label", "sha256"]
log = logging.getLogger("pipeline.split")


def deduplicate(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """One row per distinct content; a copy in an evaluation split wins over a training copy."""
    priority = {"test": 0, "val": 1, "train": 2, "": 3}
    groups = collections.defaultdict(list)
    for row in rows:
        groups[row["sha256"]].append(row)
    kept, dropped = [], []
    for group in groups.values():
        group.sort(key=lambda r: (priority[r["split"]], r["path"]))
        labels = sorted({r["label"] for r in group})
        if len(labels) > 1:
            dropped += [{**r, "reason": f"same image under labels {', '.join(labels)}"} for r in group]
        else:
            kept.append(group[0])
            dropped += [{**r, "reason": f"duplicate of {group[0]['path']}"} for r in group[1:]]
    return sorted(kept, key=lambda r: r["path"]), dropped


def stratified(rows: list[dict], fraction: float, seed: int, what: str) -> tuple[list[dict], list[dict]]:
    """Split off ``fraction`` of ``rows`` keeping class proportions; clear error when impossible."""
    counts = collections.Counter(r["label"] for r in rows)
    try:
        rest, part = train_test_split(rows, test_size=fraction, random_state=seed,
                                      stratify=[r["label"] for r in rows])
    except ValueError as err:
        small = ", ".join(f"{k} ({v})" for k, v in sorted(counts.items()) if v < 2) or "none below 2"
        raise StageError(f"cannot split off {what} ({fraction:g} of {len(rows)} images, "
                         f"{len(counts)} classes) keeping every class in both parts: {err}. "
                         f"Classes with fewest images: {small}. Add images, drop those classes, "
                         f"or change split.val_fraction / split.test_fraction") from None
    return sorted(rest, key=lambda r: r["path"]), sorted(part, key=lambda r: r["path"])


def main() -> None:
    args = artifacts.start(__doc__, "raw", "out")
    p = params.load(PARAMS)
    rows, dropped = deduplicate(images.read_csv(args.raw / "manifest.csv"))
    for row in dropped:
        log.warning("excluded %s: %s", row["path"], row["reason"])
    has_predefined = any(r["split"] for r in rows)
    strategy = p.split.strategy
    if strategy == "auto":
        strategy = "predefined" if has_predefined else "stratified"
    if strategy == "predefined" and not has_predefined:
        raise StageError("split.strategy is 'predefined' but the source has no train/validation/test "
                         "folders; use 'auto' or 'stratified'")
    log.info("strategy: %s", strategy)

    if strategy == "predefined":
        parts = {s: [r for r in rows if r["split"] == s] for s in images.SPLITS}
        if not parts["train"]:
            raise StageError("the source's split folders have no train/ images")
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
    for name, part in parts.items():
        missing = sorted(set(labels) - {r["label"] for r in part})
        if missing:
            raise StageError(f"the {name} split has no images of class(es) {', '.join(missing)}")
    with artifacts.atomic_dir(args.out) as tmp:
        for name, part in parts.items():
            images.write_csv(tmp / f"{name}.csv", part, FIELDS)
        artifacts.write_json(tmp / "labels.json", labels)
    log.info("%d classes; train %d, val %d, test %d images", len(labels),
             *(len(parts[s]) for s in images.SPLITS))


if __name__ == "__main__":
    artifacts.run(main)

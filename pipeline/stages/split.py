"""split: data/manifest.csv + data/embeddings -> data/split/{train,val,test}.csv + labels.json + reports/split.json.

Labels are first dropped, merged and checked for size (split.drop_labels,
split.merge_labels, split.min_images_per_class, split.small_classes). Then
``auto`` keeps the source's own train/validation/test folders when it has
them, else assigns the split here. Ingest already made every image unique.

Near duplicates stay together (split.group_near_duplicates): images whose
embeddings reach audit.duplicate_similarity form one group, so a test image
never has a near twin in train. In the source's own split a group goes to its
member's evaluation split (test before val before train), as ingest keeps an
exact duplicate's evaluation copy.

A split made here is stable: each image (or group) goes where a seeded hash of
its content falls (``position``), not where a shuffle of the whole set puts it,
so adding or removing images never moves another image to another split. Every
class gets its share in expectation; a class the hash leaves without a val or
test image gets its nearest one moved there (logged), the one case an addition
can undo.

The split remembers: data/split is kept in place while the stage runs (``persist``
in dvc.yaml), and an image it already holds keeps its split, whatever the
strategy, as long as the params that place images (``PLACING``, stamped in
``data/split/placed.json``) are unchanged. So a new near twin of an existing
image joins its group where the group already is, and never drags the group
elsewhere. Every image that changed split since the last run, and why, is
listed in reports/split.json (``moved``).
"""
from __future__ import annotations

import collections
import difflib
import hashlib
import logging
from types import SimpleNamespace


from pipeline.lib import artifacts, audit, cli, multilabel, params, schemas
from pipeline.lib.errors import StageError

PARAMS = ["split", "seed", "task", "audit.duplicate_similarity", "audit.neighbours"]
# The params that decide where an image goes: when one changes, the split is made afresh.
PLACING = ("seed", "split.strategy", "split.val_fraction", "split.test_fraction", "split.group_near_duplicates",
           "audit.duplicate_similarity", "audit.neighbours")
OTHER = "other"  # where split.small_classes: merge puts the small classes
# A near-duplicate group this big (a share of all images, and at least MIN_BIG images) is no set of copies
# but a chain of look-alikes joined pair by pair: images the backbone finds all alike at this threshold.
# Split then groups nothing, saying so, rather than put most of the data in one split.
MAX_GROUP_SHARE, MIN_BIG = 0.05, 20
log = logging.getLogger("pipeline.stages.split")


def relabel(rows: list[dict], p: SimpleNamespace, multi: bool = False) -> tuple[list[dict], dict[str, str]]:
    """Apply drop_labels, merge_labels and the small-class rule; return rows and what happened per label.
    ``multi`` (task: multi_label): the rules apply to each label of an image's set, and an image
    whose labels are all dropped stays, with no label."""
    def mapped(rows, change):  # each row's label (multi: each label of its set) through ``change``
        if not multi:
            return [{**r, "label": new} for r in rows if (new := change(r["label"])) is not None]
        return [{**r, "label": multilabel.encode(x for x in map(change, multilabel.decode(r["label"]))
                                                 if x is not None)} for r in rows]

    def present(rows):
        return set(multilabel.counts(rows)) if multi else {r["label"] for r in rows}

    changes = {}
    require_labels("split.merge_labels", p.merge_labels, present(rows))
    for old, new in p.merge_labels.items():
        changes[old] = f"merged into {new}"
    rows = mapped(rows, lambda label: p.merge_labels.get(label, label))
    require_labels("split.drop_labels", p.drop_labels, present(rows))
    dropped = set(p.drop_labels)
    changes.update({label: "dropped (split.drop_labels)" for label in dropped})
    rows = mapped(rows, lambda label: None if label in dropped else label)
    for rule in (p.small_classes, "drop"):  # after a merge, "other" itself may still be small
        counts = multilabel.counts(rows) if multi else collections.Counter(r["label"] for r in rows)
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
        rows = mapped(rows, lambda label: (None if rule == "drop" else OTHER) if label in small else label)
    return rows, changes


def require_labels(key: str, named, labels: set[str]) -> None:
    """Stop when ``key`` names a label no image has: matched exactly, case included, since a
    silent no-op would leave the class in (a near miss is named with "did you mean")."""
    for label in named:
        if label not in labels:
            near = [x for x in labels if x.casefold() == label.casefold()] or \
                difflib.get_close_matches(label, sorted(labels), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f" (labels: {', '.join(sorted(labels)[:20])})"
            raise StageError(f"{key}: no image has the label {label!r} (labels match case and all){hint}")


def position(seed: int, key: str) -> float:
    """Where ``key`` (a content hash) falls in [0, 1) for this seed: the same on every machine and run."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:15], 16) / 16 ** 15


def near_duplicate_groups(rows: list[dict], embeddings, p: SimpleNamespace) -> tuple[list[list[dict]], str]:
    """``rows`` in groups of near duplicates (single images mostly), in a stable order, and what was done."""
    if embeddings is None:
        return [[r] for r in rows], "off (split.group_near_duplicates)"
    x = audit.normalized(embeddings)
    idx, sim = audit.nearest(x, x, p.audit.neighbours, same=True)
    found = collections.defaultdict(list)
    for row, group in zip(rows, audit.groups(idx, sim, p.audit.duplicate_similarity)):
        found[group].append(row)
    biggest = max(map(len, found.values()))
    if biggest > max(MIN_BIG, MAX_GROUP_SHARE * len(rows)):
        log.warning("near duplicates NOT kept together: one group would hold %d of %d images (at "
                    "audit.duplicate_similarity %g the backbone finds these images alike enough to chain "
                    "them; with base.weights: none it always does). Raise audit.duplicate_similarity, or set "
                    "split.group_near_duplicates: false to silence this", biggest, len(rows),
                    p.audit.duplicate_similarity)
        return [[r] for r in rows], f"refused: one group would hold {biggest} of {len(rows)} images"
    return sorted(found.values(), key=lambda g: min(r["sha256"] for r in g)), "on"


def assign(units: list[list[dict]], fractions: dict[str, float], seed: int, what: str,
           before: dict[str, str] | None = None, multi: bool = False) -> dict[str, list[dict]]:
    """Each unit (a group of rows) to a split: where its members were ``before`` (path -> split) if
    any was placed, else by ``position`` of its smallest content hash: the first ``fractions[test]``
    of [0, 1) is test, the next ``fractions[val]`` val, the rest train. Then a class left without an
    image in one of the splits gets the unit of that class nearest to the split's interval moved in,
    from a split that has two or more; a class too small for that is an error naming it.
    ``multi`` (task: multi_label): the new units are placed by ``multilabel.stratify`` instead, in the
    order of their hash positions, and "class" above means each label of a unit's set."""
    bounds, low = {}, 0.0
    for name, share in fractions.items():
        bounds[name] = (low, low + share)
        low += share
    bounds["train"] = (low, 1.0)
    pos = [position(seed, min(r["sha256"] for r in unit)) for unit in units]
    if multi:
        where = multilabel.stratify(units, fractions, pos, [placed(unit, before or {}) for unit in units])
    else:
        where = [placed(unit, before or {}) or next(n for n, (a, b) in bounds.items() if a <= u < b or n == "train")
                 for unit, u in zip(units, pos)]
    by_label = collections.defaultdict(list)
    for i, unit in enumerate(units):
        for label in sorted({x for r in unit for x in (multilabel.decode(r["label"]) if multi else [r["label"]])}):
            by_label[label].append(i)
    for label, members in sorted(by_label.items()):
        for name, (a, b) in bounds.items():
            if any(where[i] == name for i in members):
                continue
            held = collections.Counter(where[i] for i in members)  # this class's units per split
            spare = [i for i in members if held[where[i]] >= 2]
            if not spare:
                raise StageError(f"cannot give the {name} split an image of class {label!r} when splitting off "
                                 f"{what}: it has {len(members)} image group(s). Add images, raise "
                                 "split.min_images_per_class, or list it in split.drop_labels")
            chosen = min(spare, key=lambda i: (min(abs(pos[i] - a), abs(pos[i] - b)), pos[i]))
            log.warning("class %r had no %s image by hash; moved %s there (adding images may move it back)",
                        label, name, units[chosen][0]["path"])
            where[chosen] = name
    parts = {name: [] for name in ("train", *fractions)}
    for unit, name in zip(units, where):
        parts[name] += unit
    return {name: sorted(part, key=lambda r: r["path"]) for name, part in parts.items()}


def key(row: dict) -> str:
    """An image as the last split knew it: the same path with the same content."""
    return f"{row['path']}:{row['sha256']}"


def placed(unit: list[dict], before: dict[str, str]) -> str | None:
    """Where the members of ``unit`` already placed ``before`` are (the first by schemas.SPLIT_PRIORITY when a new
    image joined groups from two splits), or None when none is."""
    seen = [before[key(r)] for r in unit if key(r) in before]
    return min(seen, key=schemas.SPLIT_PRIORITY.__getitem__) if seen else None


def keep_together(groups: list[list[dict]], before: dict[str, str]) -> tuple[list[list[dict]], int]:
    """In the source's own split: every member of a group into the split its members already have
    (``before``), else into its members' first split by schemas.SPLIT_PRIORITY."""
    moved, out = 0, []
    for group in groups:
        target = placed(group, before) or min((r["split"] for r in group), key=schemas.SPLIT_PRIORITY.__getitem__)
        moved += sum(r["split"] != target for r in group)
        out.append([{**r, "split": target} for r in group])
    return out, moved


def stamp(p: SimpleNamespace) -> dict:
    """The PLACING params' values, as placed.json records them."""
    out = {}
    for name in PLACING:
        value = p
        for part in name.split("."):
            value = getattr(value, part)
        out[name] = value
    if p.task != "single_label":  # stamped only when not the default, so a single-label split stays as it was
        out["task"] = p.task
    return out


def previous(folder, current: dict) -> dict[str, str]:
    """Where the last run placed each image (path:hash -> split), if it ran with the same PLACING
    params; else nothing (a first run, a changed param: the split is made afresh, logged)."""
    if not (folder / "placed.json").is_file():
        return {}
    if schemas.read_json(folder / "placed.json", dict) != current:
        log.info("the params that place images changed since the last split: split made afresh")
        return {}
    return {key(r): name for name in schemas.SPLITS
            for r in schemas.read_csv(folder / f"{name}.csv", schemas.SPLIT_FIELDS)}


def changed(parts: dict[str, list[dict]], before: dict[str, str], group_of: dict) -> list[dict]:
    """Every image placed ``before`` whose split is not the same now, with why."""
    moves = []
    for name, part in parts.items():
        for r in part:
            was = before.get(key(r))
            if was is None or was == name:
                continue
            group = group_of.get(id(r), [r])
            why = ("its near-duplicate group joined one in " + name) if len(group) > 1 and any(
                before.get(key(g)) == name for g in group) else f"its class had no {name} image"
            moves.append({"path": r["path"], "from": was, "to": name, "why": why})
    return sorted(moves, key=lambda m: m["path"])


def main() -> None:
    args = cli.start(__doc__, "manifest", "embeddings", "out", "report", writes=("out", "report"))
    p = params.load(PARAMS)
    multi = p.task == "multi_label"
    rows = schemas.read_csv(args.manifest, schemas.MANIFEST_FIELDS)
    if not multi and (unlabelled := [r["path"] for r in rows if not r["label"]]):
        raise StageError(f"{args.manifest} holds images with no label (e.g. {unlabelled[0]}), which ingest keeps "
                         "only for task: multi_label, but task is single_label: rerun ingest, or set task: multi_label")
    rows, changes = relabel(rows, p.split, multi)
    before = previous(args.out, stamp(p))
    labels = sorted(multilabel.counts(rows) if multi else {r["label"] for r in rows})
    if len(labels) < (1 if multi else 2):
        raise StageError(f"{len(labels)} class(es) left after split.drop_labels / merge_labels / "
                         f"min_images_per_class={p.split.min_images_per_class}; need at least "
                         f"{1 if multi else 2}: add images, or lower split.min_images_per_class")
    has_predefined = any(r["split"] for r in rows)
    strategy = p.split.strategy
    if strategy == "auto":
        strategy = "predefined" if has_predefined else "stratified"
    if strategy == "predefined" and not has_predefined:
        raise StageError("split.strategy is 'predefined' but the source has no train/validation/test "
                         "folders (or split column); use 'auto' or 'stratified'")
    log.info("strategy: %s", strategy)
    embeddings = audit.read_embeddings(args.embeddings, rows)[1] if p.split.group_near_duplicates else None
    groups, grouping = near_duplicate_groups(rows, embeddings, p)
    grouped = [g for g in groups if len(g) > 1]
    if grouping == "on":
        log.info("%d near-duplicate groups (%d images) kept within one split", len(grouped), sum(map(len, grouped)))
    moved = 0
    fractions = {"test": p.split.test_fraction, "val": p.split.val_fraction}
    if strategy == "predefined":
        groups, moved = keep_together(groups, before)
        if moved:
            log.info("moved %d images into their near twin's split", moved)
        parts = {s: sorted((r for g in groups for r in g if r["split"] == s), key=lambda r: r["path"])
                 for s in schemas.SPLITS}
        if not parts["train"]:
            raise StageError("the source's own split has no training images")
        missing = {name: share for name, share in fractions.items() if not parts[name]}
        if missing:  # e.g. a source with only train/ and validation/: carve the rest out of train
            carved = assign([g for g in groups if g[0]["split"] == "train"], missing, p.seed,
                            " and ".join(missing), before, multi)
            parts.update(carved)
    else:
        parts = assign(groups, fractions, p.seed, "val or test", before, multi)
    parts = {name: parts[name] for name in schemas.SPLITS}

    for name, part in parts.items():
        missing = sorted(set(labels) - (set(multilabel.counts(part)) if multi else {r["label"] for r in part}))
        if missing:
            raise StageError(f"the {name} split has no images of class(es) {', '.join(missing)}")
    moves = changed(parts, before, {id(r): g for g in groups for r in g})
    for m in moves[:5]:
        log.warning("%s moved from %s to %s: %s", m["path"], m["from"], m["to"], m["why"])
    if len(moves) > 5:
        log.warning("... and %d more moved (reports/split.json lists them)", len(moves) - 5)
    with artifacts.atomic_dir(args.out) as tmp:
        for name, part in parts.items():
            schemas.write_csv(tmp / f"{name}.csv", part, schemas.SPLIT_FIELDS)
        artifacts.write_json(tmp / "labels.json", labels)
        artifacts.write_json(tmp / "placed.json", stamp(p))
    counts = {name: dict(sorted((multilabel.counts(part) if multi else collections.Counter(
        r["label"] for r in part)).items())) for name, part in parts.items()}
    if multi:  # images with none of the labels, per split
        for name, part in parts.items():
            counts[name]["(no label)"] = sum(not r["label"] for r in part)
    artifacts.write_json(args.report, {"strategy": strategy, **({"task": p.task} if multi else {}), "labels": labels, "label_changes": changes,
                                       "images": {n: len(part) for n, part in parts.items()},
                                       "near_duplicate_grouping": grouping,
                                       "near_duplicate_groups": len(grouped),
                                       "moved_to_a_twin's_split": moved,
                                       "kept_from_the_last_split": sum(key(r) in before for part in parts.values()
                                                                       for r in part),
                                       "moved": moves,
                                       "per_class": counts})
    log.info("%d classes; train %d, val %d, test %d images", len(labels),
             *(len(parts[s]) for s in schemas.SPLITS))


if __name__ == "__main__":
    cli.run(main)

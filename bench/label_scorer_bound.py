"""How well could the fine-tuned network find wrong labels? An optimistic bound, against the audit's
frozen-feature scorer, on the same images and the same injected flips (docs/performance.md#the-data-audit).

    python bench/label_scorer_bound.py [--seeds 20]    # after `make repro`, in this checkout
    python bench/label_scorer_bound.py --trained [--seeds 1]   # about 10 min a setting and seed

The fine-tuned model (models/model.keras) never trained on the val and test images, so its
probabilities there are out of sample, like an out-of-fold fine-tuned head's, but better: it
trained on clean labels. Per seed, the labels of 5% or 10% of the val + test images are flipped
(uniformly, or each to its class's look-alike: the class the audit's classifier confuses it with
most, as bench/audit.py does); the audit's scorer runs on every image's embedding with those
labels. Each scorer ranks the val + test images by 1 - its probability of the given label;
reported: accuracy against the clean labels, and precision at recall 0.8 (mean and minimum over
seeds). If the fine-tuned network misses the target here, no scorer of its quality meets it.

--trained: what the network gives on the training images, where the wrong labels it learnt
from are. Per setting (uniform 5%, look-alike 5%) and seed, a scratch copy of the project whose
data/images has 5% of its training photos moved into another class's folder (what a wrong label
is to a user) runs `dvc repro finetune`. Compared on the training images: the shipped frozen
scorer; the fine-tuned model's own probabilities (in sample: it trained on those labels); the
same out-of-sample scorer (folds + neighbour vote) on the fine-tuned extractor's embeddings; and
averages.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
from bench.audit import flipped, precision_at_recall  # noqa: E402
from bench.common import ROOT, copy_clothing, environment, make_project, run, save, table  # noqa: E402
from pipeline.lib import audit, confidence, images, params, schemas  # noqa: E402

SETTINGS = {"uniform 5%": ("uniform", 0.05), "uniform 10%": ("uniform", 0.10), "look-alike 5%": ("look-alike", 0.05)}


def fine_tuned_probabilities(rows: list[dict], size: int) -> np.ndarray:
    from pipeline.lib import inference, keras_files
    model = inference.KerasClassifier(keras_files.load(ROOT / "models/model.keras"))
    source = ROOT / "data/images"
    pixels = np.stack([images.decode_recorded(source, size, r) for r in rows])
    return model.predict(pixels)


def mislabelled(kind: str, rate: float, lookalike: dict, seed: int, moved: dict):
    """``fill`` for make_project: the clothing photos, a seeded ``rate`` of the training photos moved
    to another class's folder (uniformly, or to the look-alike), recorded in ``moved``: new path -> true class."""
    def fill(folder: Path) -> None:
        copy_clothing(folder)
        classes = sorted(p.name for p in (folder / "train").iterdir())
        train = sorted((folder / "train").rglob("*.jpg"))
        rng = np.random.default_rng(seed)
        for i in rng.choice(len(train), int(rate * len(train)), replace=False):
            true = train[i].parent.name
            to = (classes[(classes.index(true) + rng.integers(1, len(classes))) % len(classes)]
                  if kind == "uniform" else lookalike[true])
            target = folder / "train" / to / train[i].name
            train[i].rename(target)
            moved[str(target.relative_to(folder))] = true
    return fill


def trained(seeds, p) -> dict:
    import tempfile

    from pipeline.lib import keras_files
    lookalike = {}
    result = {}
    for setting, (kind, rate) in SETTINGS.items():
        if setting == "uniform 10%":
            continue
        for seed in seeds:
            with tempfile.TemporaryDirectory(prefix="label-scorer-") as tmp:
                tmp = Path(tmp)
                env = environment(tmp)
                if not lookalike:
                    lookalike = json.loads((ROOT / "bench/results/label_scorer_bound.json").read_text())["lookalike"]
                moved = {}
                project = make_project(tmp / "project", env, fill=mislabelled(kind, rate, lookalike, seed, moved))
                seconds, _ = run(["dvc", "repro", "-q", "finetune"], project, env)
                split = project / "data/split"
                labels = schemas.read_labels(split / "labels.json")
                rows = [{**r, "split": name} for name in schemas.SPLITS
                        for r in schemas.read_csv(split / f"{name}.csv", schemas.SPLIT_FIELDS)]
                _, x = audit.read_embeddings(project / "data/embeddings", rows)
                x = audit.normalized(x)
                y = np.array([labels.index(r["label"]) for r in rows])
                truth = np.array([r["path"] in moved for r in rows])
                clean = np.array([labels.index(moved.get(r["path"], r["label"])) for r in rows])
                train = np.array([r["split"] == "train" for r in rows])
                c = len(labels)
                model = keras_files.load(project / "models/model.keras")
                pixels = np.stack([images.decode_recorded(project / "data/images", p.base.image_size, r) for r in rows])
                tuned = model.predict(pixels, batch_size=64, verbose=0)
                features = model.get_layer("extractor").predict(pixels, batch_size=64, verbose=0)
                del pixels

                def scorer(z):
                    z = audit.normalized(z)
                    idx, sim = audit.nearest(z, z, p.audit.neighbours, same=True)
                    return (audit.out_of_sample_probabilities(z, y, c, p.audit.folds, seed)
                            + audit.neighbour_votes(idx, sim, y, c)) / 2

                q = {"frozen (shipped)": scorer(x), "fine-tuned, in sample": tuned,
                     "fine-tuned embeddings, out of sample": scorer(features)}
                q["frozen + fine-tuned embeddings"] = (q["frozen (shipped)"] + q["fine-tuned embeddings, out of sample"]) / 2
                out = {"seconds_to_finetune": seconds, "moved": len(moved), "scorers": {}}
                for name, probs in q.items():
                    wrong = audit.wrong_label_probability(confidence.recalibrated(probs, y), y)[0]
                    flagged = (wrong >= p.audit.label_issue_probability) & train
                    hits = int((flagged & truth).sum())
                    out["scorers"][name] = {
                        "accuracy_on_clean_labels": float((probs.argmax(axis=1) == clean).mean()),
                        "precision_at_recall_0.8": precision_at_recall(1 - probs[np.arange(len(y)), y][train], truth[train]),
                        "flagged": int(flagged.sum()), "precision": hits / max(1, int(flagged.sum())),
                        "recall": hits / max(1, int(truth.sum()))}
                result[f"{setting}, seed {seed}"] = out
                table(f"{setting}, seed {seed}: {len(moved)} training photos moved; on the training images",
                      ["scorer", "accuracy (clean)", "precision at recall 0.8", "flagged", "precision", "recall"],
                      [[k, v["accuracy_on_clean_labels"], v["precision_at_recall_0.8"], v["flagged"], v["precision"], v["recall"]]
                       for k, v in out["scorers"].items()])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seed numbers (default: 1 to 20; --trained: 1)")
    parser.add_argument("--trained", action="store_true")
    args = parser.parse_args()
    if args.trained:
        p = params.load(["audit", "seed", "base.image_size"], ROOT / "params.yaml")
        found = trained(args.seeds or [1], p)
        path = ROOT / "bench/results/label_scorer_bound.json"
        saved = json.loads(path.read_text())
        saved.pop("machine", None)
        save("label_scorer_bound", {**saved, "trained": {**saved.get("trained", {}), **found}})
        return
    seeds = args.seeds or range(1, 21)
    p = params.load(["audit", "seed", "base.image_size"], ROOT / "params.yaml")
    split = ROOT / "data/split"
    labels = schemas.read_labels(split / "labels.json")
    rows = [{**r, "split": name} for name in schemas.SPLITS for r in schemas.read_csv(split / f"{name}.csv", schemas.SPLIT_FIELDS)]
    recorded, x = audit.read_embeddings(ROOT / "data/embeddings", rows)
    x = audit.normalized(x)
    given = np.array([labels.index(r["label"]) for r in rows])
    held = np.array([r["split"] != "train" for r in rows])  # never trained on by the fine-tuned model
    c = len(labels)
    idx, sim = audit.nearest(x, x, p.audit.neighbours, same=True)

    def frozen(y, seed):
        return (audit.out_of_sample_probabilities(x, y, c, p.audit.folds, seed) + audit.neighbour_votes(idx, sim, y, c)) / 2

    tuned = fine_tuned_probabilities([r for r, h in zip(rows, held) if h], p.base.image_size)
    clean = frozen(given, 0)
    confused = np.zeros((c, c))
    np.add.at(confused, (given, clean.argmax(axis=1)), 1)
    np.fill_diagonal(confused, -1)
    lookalike = confused.argmax(axis=1)

    scorers = ("frozen (shipped)", "fine-tuned", "both, averaged")
    result = {"images": int(held.sum()), "settings": {}}
    for setting, (kind, rate) in SETTINGS.items():
        found = {s: [] for s in scorers}
        accuracy = {s: [] for s in scorers}
        for seed in seeds:
            y, truth = flipped(given, held, kind, rate, lookalike, seed)
            q = {"frozen (shipped)": frozen(y, seed)[held], "fine-tuned": tuned}
            q["both, averaged"] = (q["frozen (shipped)"] + tuned) / 2
            for s in scorers:
                yh = y[held]
                found[s].append(precision_at_recall(1 - q[s][np.arange(len(yh)), yh], truth[held]))
                accuracy[s].append(float((q[s].argmax(axis=1) == given[held]).mean()))
        result["settings"][setting] = {"injected": int(rate * held.sum()),
                                       **{s: {"precision_at_recall_0.8": {"mean": float(np.mean(found[s])), "min": float(np.min(found[s]))},
                                              "accuracy": float(np.mean(accuracy[s]))} for s in scorers}}
    table(f"precision at recall 0.8 on the {int(held.sum())} val + test images (mean, min over {len(seeds)} seeds); "
          "accuracy on the clean labels",
          ["setting", *scorers],
          [[setting, *[f"{r[s]['precision_at_recall_0.8']['mean']:.2f}, {r[s]['precision_at_recall_0.8']['min']:.2f} "
                      f"({r[s]['accuracy']:.3f})" for s in scorers]] for setting, r in result["settings"].items()])
    result["lookalike"] = {labels[i]: labels[j] for i, j in enumerate(lookalike)}
    path = ROOT / "bench/results/label_scorer_bound.json"
    if path.exists():  # keep the slower --trained results
        result["trained"] = json.loads(path.read_text()).get("trained", {})
    save("label_scorer_bound", result)


if __name__ == "__main__":
    main()

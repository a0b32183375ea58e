"""Learning-rate range test: ``python -m pipeline lr_find {head,finetune}``.

An optional command, not a pipeline stage: a short run of the head (on the
cached features) or of fine-tuning (on the training images, with the
unfrozen layers, class weights and label smoothing the params give) whose
learning rate grows exponentially from ``--min-lr`` to ``--max-lr``, one step
at a time. The smoothed training loss falls while the rate is useful and
explodes once it is too high; the suggestion is a tenth of the rate at which
the loss starts to climb past its lowest (see ``suggest``). Writes a plot of
loss against rate and the numbers as JSON beside the stage's DVCLive folder,
and prints the ``dvc exp run`` line that tries the suggestion. Inputs come from
the stage's command in dvc.yaml, params from params.yaml, so it sees exactly
what the stage would.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np

from pipeline.lib import artifacts, dvcyaml, errors, params, schemas

STAGES = {"head": "train_head", "finetune": "finetune"}
SMOOTHING = 0.98  # exponential moving average of the loss, bias-corrected
DIVERGED = 4.0  # stop once the smoothed loss is this many times its lowest value
SKIP_START = 10  # steps left out when looking for the lowest loss
RISE = 1.25  # the loss has clearly started to climb once it is 25% above its lowest
log = logging.getLogger("pipeline.lr_find")


def lowest(losses: np.ndarray) -> int:
    """Index of the lowest smoothed loss, skipping the first steps (as fastai does): the moving
    average rests on a few batches there, and a pretrained model's first batch can be its best."""
    skip = min(SKIP_START, len(losses) // 4)
    return skip + int(np.argmin(losses[skip:]))


def suggest(rates: np.ndarray, losses: np.ndarray) -> float:
    """A tenth of the highest rate at which the loss is still near its lowest: the first rate past
    the lowest loss where it has risen by ``RISE``, or the lowest loss's rate if it never rises.

    On a curve that falls and then explodes this is close to fastai's lowest/10; on the flat
    curve of an already trained model (fine-tuning) the lowest point is noise, and the rate
    where the loss starts to climb is what tells how far one can go.
    """
    best = lowest(losses)
    rising = np.flatnonzero(losses[best:] > RISE * losses[best])
    edge = best + int(rising[0]) - 1 if len(rising) else best
    return float(rates[edge] / 10)


def range_test(model, batches, label_smoothing: float, class_weights: dict[int, float] | None, min_lr: float,
               max_lr: float, steps: int):
    """Train one step per rate on a log scale; return (rates, smoothed losses) up to divergence.
    The loss and class weights are the training loop's own (training.weighted_losses)."""
    import keras
    import tensorflow as tf

    from pipeline.lib import training

    optimizer = keras.optimizers.Adam(min_lr)
    optimizer.build(model.trainable_variables)
    loss_fn = training.loss(label_smoothing, reduction=None)
    weights = training.weight_vector(class_weights, model.output_shape[-1])

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(training.weighted_losses(loss_fn, weights, y, model(x, training=True)))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    rates, losses, average, best = [], [], 0.0, math.inf
    for i, (x, y) in enumerate(batches.take(steps)):
        rate = min_lr * (max_lr / min_lr) ** (i / max(1, steps - 1))
        optimizer.learning_rate.assign(rate)
        average = SMOOTHING * average + (1 - SMOOTHING) * float(step(x, y))
        smoothed = average / (1 - SMOOTHING ** (i + 1))
        if not math.isfinite(smoothed):  # kept out of the curve: JSON has no NaN or infinity
            log.info("loss not finite at learning rate %.2e: stopping", rate)
            break
        rates.append(rate), losses.append(smoothed)
        best = min(best, smoothed)
        if i % 10 == 0:
            log.info("step %d/%d: learning rate %.2e, loss %.4f", i + 1, steps, rate, smoothed)
        if smoothed > DIVERGED * best:
            log.info("loss diverged at learning rate %.2e: stopping", rate)
            break
    return np.array(rates), np.array(losses)


def setup(stage: str, paths: dict[str, Path], p) -> tuple:
    """(model, endless batches, class names, training images per class), as the stage builds them."""
    from pipeline.lib import finetuning, models, runtime, shards, training

    runtime.set_seed(p.seed)
    hp = getattr(p, stage)
    if stage == "train_head":
        labels = schemas.read_labels(paths["labels"])
        x, y = schemas.read_features(paths["features"], "train", len(labels))
        batches = training.feature_batches(x, y, p.seed, 0, hp.batch_size).repeat()
        return (models.build_head(x, len(labels), hp.hidden_units, hp.dropout), batches, labels,
                np.bincount(y, minlength=len(labels)))
    model = finetuning.unfrozen_model(paths["extractor"], paths["head"], hp.unfreeze_layers, "float32")
    meta = shards.meta(paths["augmented"])
    batches = finetuning.training_batches(paths["augmented"], p, hp.batch_size, epoch=0)
    return model, batches.repeat(), meta["labels"], meta["class_counts"]["train"]


RESULT = artifacts.starts_with("an lr_find result", b'{\n  "suggested_learning_rate"')  # a rerun replaces it


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline lr_find", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=sorted(STAGES), help="head (cached features) or finetune (images)")
    parser.add_argument("--min-lr", type=float, default=1e-7)
    parser.add_argument("--max-lr", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=100, help="training steps (batches), one per rate")
    parser.add_argument("--out", type=Path, help="folder for the plot and JSON (default: beside the "
                                                 "stage's DVCLive folder, e.g. reports/)")
    args = parser.parse_args()
    if not 0 < args.min_lr < args.max_lr or args.steps < 2:
        parser.error("need 0 < --min-lr < --max-lr and --steps >= 2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    stage = STAGES[args.phase]
    paths = dvcyaml.paths(dvcyaml.stages()[stage])
    out = args.out or paths["live"].parent

    from pipeline.lib import plots_training, training  # TensorFlow: after the arguments are checked

    p = params.load([stage, "class_weights", "augment", "seed"])
    hp = getattr(p, stage)
    model, batches, labels, counts = setup(stage, paths, p)
    weights = training.class_weights(counts, labels, p.class_weights.mode, p.class_weights.auto_ratio)
    rates, losses = range_test(model, batches, hp.label_smoothing, weights, args.min_lr, args.max_lr, args.steps)
    suggested = suggest(rates, losses)
    out.mkdir(parents=True, exist_ok=True)
    with artifacts.atomic_file(out / f"lr_find_{args.phase}.png", artifacts.PNG) as tmp:
        plots_training.lr_range(rates, losses, suggested, tmp, f"Learning-rate range test: {args.phase} "
                       f"({len(rates)} steps of {hp.batch_size})")
    artifacts.write_json(out / f"lr_find_{args.phase}.json", kind=RESULT, data={
        "suggested_learning_rate": suggested, "lowest_loss_at": float(rates[lowest(losses)]),
        "current_learning_rate": hp.learning_rate, "learning_rates": rates.tolist(), "losses": losses.tolist()})
    print(f"suggested {stage}.learning_rate: {suggested:.2g} (a tenth of where the loss starts to climb; "
          f"lowest loss at {rates[lowest(losses)]:.2g}; "
          f"params.yaml has {hp.learning_rate:g})\nplot: {out / f'lr_find_{args.phase}.png'}\n"
          f"try it: dvc exp run -S {stage}.learning_rate={suggested:.2g}")


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, params.ParamsError, errors.StageError) as err:
        print(f"lr_find: {errors.describe(err)} (run `dvc repro` first: the range test needs the pipeline's inputs)", file=sys.stderr)
        sys.exit(1)

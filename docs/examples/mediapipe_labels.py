"""Tag images with an exported task: multi_label .tflite file through MediaPipe Tasks, each label
against its own threshold, as predict does.

    python docs/examples/mediapipe_labels.py models/export/model_float32.tflite photo.jpg [more.jpg ...]

The file's first head is a calibrated probability per label, its second the ``known`` score. Both
thresholds are in calibration.json beside the file: ``label_thresholds`` (one per label, in the
order of labels.txt and of the head's category indices) and ``unknown_threshold``. MediaPipe's own
``score_threshold`` is one number for every category and both heads: leave it unset and apply the
per-label ones yourself, as here (the same three lines in Kotlin, Swift or JavaScript, on
``classificationResult.classifications()``). Nothing here but MediaPipe (``pip install mediapipe``).
"""
import json
import sys
from pathlib import Path

import mediapipe as mp
from mediapipe.tasks.python import BaseOptions, vision

model, photos = Path(sys.argv[1]), sys.argv[2:]
calibration = json.loads((model.parent / "calibration.json").read_text())
cut, unknown_below = calibration["label_thresholds"], calibration["unknown_threshold"]
options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(model)), max_results=-1)
with vision.ImageClassifier.create_from_options(options) as classifier:
    for photo in photos:
        labels, known = classifier.classify(mp.Image.create_from_file(photo)).classifications
        present = [c for c in labels.categories if c.score >= cut[c.index]]  # each label against its own threshold
        score = known.categories[0].score
        answer = "unknown" if score < unknown_below else "|".join(c.category_name for c in present) or "(none)"
        print(f"{photo}\t{answer}\t" + " ".join(f"{c.category_name} {c.score:.2%}" for c in present)
              + f"\tknown {score:.3f}")

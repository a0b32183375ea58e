"""Classify images with an exported .tflite file through MediaPipe Tasks, saying "unknown" as predict does.

    python docs/examples/mediapipe_unknown.py models/export/model_int8.tflite photo.jpg [more.jpg ...]

The file's first head is the calibrated class probabilities, its second the ``known`` score;
the threshold is in calibration.json beside the file (docs/evaluation.md#unknown). Nothing here
but MediaPipe (``pip install mediapipe``): the same calls exist in MediaPipe's Kotlin, Swift and
JavaScript APIs (``classificationResult.classifications()[1]``).
"""
import json
import sys
from pathlib import Path

import mediapipe as mp
from mediapipe.tasks.python import BaseOptions, vision

model, photos = Path(sys.argv[1]), sys.argv[2:]
threshold = json.loads((model.parent / "calibration.json").read_text())["unknown_threshold"]
# No score_threshold: it would apply to the known head as well, and drop its one category
options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(model)), max_results=1)
with vision.ImageClassifier.create_from_options(options) as classifier:
    for photo in photos:
        probabilities, known = classifier.classify(mp.Image.create_from_file(photo)).classifications
        best, score = probabilities.categories[0], known.categories[0].score
        verdict = "unknown" if score < threshold else best.category_name
        print(f"{photo}\t{verdict}\t{best.category_name} {best.score:.2%}\tknown {score:.3f}")

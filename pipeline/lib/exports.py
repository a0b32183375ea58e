"""The exported formats, one row each: the table that the export stage, the model card
(summary) and the tests read. Plain data, no TensorFlow, so the summary stage stays light.

Each key is the format's row in reports/export.json; ``file`` is its path under
models/export/ (a trailing ``/``: a folder); ``runtime`` is what scores it on the test
split, as the model card names it; ``min_agreement`` is the share of test images on which
its top-1 class must equal the Keras model's, below which export warns that the file is not
the model it claims to be: float32 formats are the same network, the image-bytes signature
decodes within one grey level of Pillow, half precision and int8 round. A warning, not a
failure: the numbers are in the metrics, for a person or a CI check to judge.
"""
from __future__ import annotations

from typing import NamedTuple


class Format(NamedTuple):
    file: str
    runtime: str
    min_agreement: float


TFLITE_KINDS = ("float32", "float16", "int8")
_TFLITE_AGREEMENT = {"float32": 0.99, "float16": 0.95, "int8": 0.9}

FORMATS: dict[str, Format] = {
    "keras": Format("model.keras", "Keras", 1.0),
    "saved_model": Format("saved_model/", "TensorFlow, `serving_pixels`", 0.99),
    "saved_model_bytes": Format("saved_model/", "TensorFlow, `serving_default` (image bytes in)", 0.98),
    "onnx": Format("model.onnx", "onnxruntime", 0.99),
    **{f"tflite_{k}": Format(f"model_{k}.tflite", "LiteRT", _TFLITE_AGREEMENT[k]) for k in TFLITE_KINDS},
    **{f"mediapipe_{k}": Format(f"model_{k}.tflite", "MediaPipe ImageClassifier", _TFLITE_AGREEMENT[k])
       for k in TFLITE_KINDS},
}


def file_name(row: str) -> str:
    """The file or folder name of a row's format under models/export/ (no trailing slash)."""
    return FORMATS[row].file.rstrip("/")

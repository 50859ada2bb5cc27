"""edge-infer runtime: classify digit images with an ONNX model and onnxruntime. No torch needed.

from edge_infer import Classifier
prediction = Classifier().predict("digit.png")
print(prediction.label, prediction.confidence)
"""

from typing import Any

from edge_infer.classifier import Classifier, ModelError, Prediction
from edge_infer.model_info import ModelInfo
from edge_infer.preprocess import ImageError, preprocess

__all__ = [
    "Classifier",
    "DigitPrediction",
    "ImageError",
    "ModelError",
    "ModelInfo",
    "NumberReading",
    "Prediction",
    "explain",
    "preprocess",
]

# Loaded on first use, so that `edge-infer one.png` starts no slower: explain() draws with ImageDraw, and the
# number reader is only needed by read_number(s).
_LAZY = {
    "explain": "edge_infer.input_picture",
    "DigitPrediction": "edge_infer.number",
    "NumberReading": "edge_infer.number",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edge_infer' has no attribute {name!r}")

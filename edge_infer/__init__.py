"""edge-infer runtime: classify digit images with an ONNX model and onnxruntime. No torch needed.

from edge_infer import Classifier
prediction = Classifier().predict("digit.png")
print(prediction.label, prediction.confidence)
"""

from edge_infer.classifier import Classifier, ModelError, Prediction
from edge_infer.model_info import ModelInfo
from edge_infer.number import DigitPrediction, NumberReading
from edge_infer.preprocess import ImageError, preprocess

__all__ = ["Classifier", "DigitPrediction", "ImageError", "ModelError", "ModelInfo", "NumberReading", "Prediction",
           "preprocess"]

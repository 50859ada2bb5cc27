"""edge-infer runtime: classify digit images with an ONNX model and onnxruntime. No torch needed.

    from edge_infer import Classifier
    prediction = Classifier().predict("digit.png")
    print(prediction.label, prediction.confidence)
"""
from edge_infer.classifier import Classifier, ModelError, Prediction
from edge_infer.model_info import ModelInfo
from edge_infer.preprocess import ImageError, preprocess

__all__ = ["Classifier", "ImageError", "ModelError", "ModelInfo", "Prediction", "explain", "preprocess"]


def __getattr__(name: str):
    # explain() draws with Pillow's ImageDraw: imported on first use, so `edge-infer` starts no slower.
    if name == "explain":
        from edge_infer.input_picture import explain

        return explain
    raise AttributeError(f"module 'edge_infer' has no attribute {name!r}")

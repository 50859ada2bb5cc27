"""The contract between training and runtime: what an edge-infer .onnx file says about itself.

export/ writes a ModelInfo into the model's metadata_props (all values strings, JSON where structured);
the runtime reads it back. Nothing else couples the two sides.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

FORMAT = "edge-infer/1"
INPUT_NAME, OUTPUT_NAME = "rows", "logits"
STEPS, PIXELS = 28, 28
INPUT_LAYOUT = ("rows: float32 [28, N, 28] = (time step = image row, batch, pixels of that row); "
                "logits: float32 [N, 10]")
PREPROCESSING = ("MNIST form: 28x28 grey image, ink bright (1.0) on a dark (0.0) background, values in [0, 1] "
                 "as torchvision's ToTensor gives them, the digit scaled to fit a 20x20 box (aspect kept) and "
                 "placed with its centre of mass at the centre; any normalisation happens inside the graph")


OPTIONAL = frozenset({"calibration"})  # metadata that older edge-infer models lack


@dataclass
class ModelInfo:
    precision: str  # "fp32" | "int8"
    mnist_test_accuracy: float  # this ONNX model's accuracy on the 10,000 MNIST test images
    model: dict  # cell, hidden, layers, graph form
    recipe: dict  # the training recipe (optimizer, lr, batch size, epochs, ...)
    package_version: str
    min_onnxruntime: str
    opset: int
    checks: dict = field(default_factory=dict)  # what the exporter verified (parity, int8 accuracy delta)
    # temperature scaling folded into the logits (the probabilities are calibrated): temperature, and the
    # held-out images and ECE it was fitted on; {} for uncalibrated models
    calibration: dict = field(default_factory=dict)
    labels: list[str] = field(default_factory=lambda: [str(d) for d in range(10)])
    input_layout: str = INPUT_LAYOUT
    preprocessing: str = PREPROCESSING
    format: str = FORMAT

    def to_metadata(self) -> dict[str, str]:
        return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in asdict(self).items()}

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> "ModelInfo":
        """Raises ValueError when the metadata is not edge-infer's."""
        if props.get("format") != FORMAT:
            raise ValueError("not an edge-infer model (its metadata has no 'format: edge-infer/1')")
        values = {}
        for f in fields(cls):
            if f.name not in props:
                if f.name in OPTIONAL:
                    continue  # models exported before the field existed
                raise ValueError(f"model metadata lacks {f.name!r}")
            text = props[f.name]
            values[f.name] = text if f.type == "str" else json.loads(text)
        return cls(**values)

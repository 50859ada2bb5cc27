"""The contract between training and runtime: the model's interface and what an edge-infer .onnx file says
about itself. This is the one place that defines it; train/, export/, edge_infer/, the tests and the
benchmarks all import it from here.

export/ writes a ModelInfo into the model's metadata_props (all values strings, JSON where structured);
the runtime reads it back. Nothing else couples the two sides.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import numpy as np

FORMAT = "edge-infer/1"
INPUT_NAME, OUTPUT_NAME = "rows", "logits"
STEPS, PIXELS = 28, 28  # time steps (one per image row) and the pixels of one row
CLASSES = 10
LABELS = [str(d) for d in range(CLASSES)]
IMAGE_SHAPE = (STEPS, PIXELS)  # one preprocessed digit: 28x28, row-major
INPUT_LAYOUT = (
    f"{INPUT_NAME}: float32 [{STEPS}, N, {PIXELS}] = (time step = image row, batch, pixels of that row); "
    f"{OUTPUT_NAME}: float32 [N, {CLASSES}]"
)
PREPROCESSING = (
    "MNIST form: 28x28 grey image, ink bright (1.0) on a dark (0.0) background, values in [0, 1] "
    "as torchvision's ToTensor gives them, the digit scaled to fit a 20x20 box (aspect kept) and "
    "placed with its centre of mass at the centre; any normalisation happens inside the graph"
)


def to_rows(digits: np.ndarray) -> np.ndarray:
    """The model's input from preprocessed digits: float32 [N, 28, 28] -> contiguous float32 [28, N, 28]
    (time-major: step t is row t of every image). uint8 images (0-255) are scaled to [0, 1] first."""
    digits = np.asarray(digits)
    if digits.ndim != 3 or digits.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"expected digits of shape [N, {STEPS}, {PIXELS}], got {list(digits.shape)}")
    rows: np.ndarray = np.ascontiguousarray(digits.transpose(1, 0, 2), dtype=np.float32)
    if digits.dtype == np.uint8:
        rows /= np.float32(255.0)
    return rows


@dataclass
class ModelInfo:
    """Fields without a default are required; a field with a default may be absent from older models'
    metadata (it then takes the default), so a new optional field is one line here."""

    precision: str  # "fp32" | "int8"
    mnist_test_accuracy: float  # this ONNX model's accuracy on the 10,000 MNIST test images
    model: dict[str, Any]  # cell, hidden, layers, graph form
    recipe: dict[str, Any]  # the training recipe (optimizer, lr, batch size, epochs, ...)
    package_version: str
    min_onnxruntime: str
    opset: int
    checks: dict[str, Any] = field(default_factory=dict)  # what the exporter verified (parity, int8 delta)
    # temperature scaling folded into the logits, so the probabilities are calibrated: the temperature and
    # the held-out images and ECE it was fitted on; {} for uncalibrated models
    calibration: dict[str, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=lambda: list(LABELS))
    input_layout: str = INPUT_LAYOUT
    preprocessing: str = PREPROCESSING
    format: str = FORMAT

    def to_metadata(self) -> dict[str, str]:
        return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in asdict(self).items()}

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> ModelInfo:
        """Raises ValueError when the metadata is not edge-infer's or lacks a required field."""
        if props.get("format") != FORMAT:
            raise ValueError(f"not an edge-infer model (its metadata has no 'format: {FORMAT}')")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in props:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise ValueError(f"model metadata lacks {f.name!r}")
                continue  # optional: the dataclass default applies
            text = props[f.name]
            try:
                values[f.name] = text if f.type in ("str", str) else json.loads(text)
            except ValueError:
                raise ValueError(f"model metadata {f.name!r} is not valid JSON") from None
        return cls(**values)

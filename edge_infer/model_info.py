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
MAX_METADATA_VALUE = 64 * 1024  # characters of one metadata value (the bundled models' longest: ~300)
MAX_SWITCH_BATCH = 4096  # the largest batch size an auto-form model may switch branches at (edge-export: 16-64)
PREPROCESSING = (
    "MNIST form: 28x28 grey image, ink bright (1.0) on a dark (0.0) background, values in [0, 1] "
    "as torchvision's ToTensor gives them, the digit scaled to fit a 20x20 box (aspect kept) and "
    "placed with its centre of mass at the centre; any normalisation happens inside the graph"
)


# The JSON type each structured ModelInfo field must have (its annotation, as a string).
_JSON_KINDS: dict[str, tuple[type, ...]] = {
    "float": (int, float),
    "int": (int,),
    "dict[str, Any]": (dict,),
    "list[str]": (list,),
}


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
            if len(text) > MAX_METADATA_VALUE:
                raise ValueError(
                    f"model metadata {f.name!r} is too long ({len(text):,} characters, limit {MAX_METADATA_VALUE:,})"
                )
            try:
                values[f.name] = text if f.type in ("str", str) else json.loads(text)
            except RecursionError:
                raise ValueError(f"model metadata {f.name!r} is nested too deeply") from None
            except ValueError:
                raise ValueError(f"model metadata {f.name!r} is not valid JSON") from None
            kind = _JSON_KINDS.get(str(f.type))
            if kind is not None and (isinstance(values[f.name], bool) or not isinstance(values[f.name], kind)):
                raise ValueError(f"model metadata {f.name!r} is not a JSON {kind[-1].__name__}")
        large_from_batch(values.get("model"))  # refuses a switch no batch can reach (1e400 reads as inf)
        return cls(**values)

    @property
    def large_from_batch(self) -> int | None:
        """The batch size from which an auto-form model runs its other branch (its If on the batch size),
        from the metadata; None for models of one form. ValueError if it is not a sane batch size."""
        return large_from_batch(self.model)


def large_from_batch(model: object) -> int | None:
    """metadata["model"]["large_from_batch"] (parsed JSON): an int in [2, MAX_SWITCH_BATCH], or None if
    absent; ValueError otherwise (1e400 parses as inf, a string, a huge int...)."""
    value = model.get("large_from_batch") if isinstance(model, dict) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_SWITCH_BATCH:
        raise ValueError(f"model metadata large_from_batch must be a batch size from 2 to {MAX_SWITCH_BATCH}")
    return value

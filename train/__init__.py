"""Training side of edge-infer (needs torch): the model, MNIST loading and the trainer.

Importing the package loads nothing heavy: train.files (atomic writes) is usable without torch, and the
names below load train.model (torch) on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CELLS", "DigitRNN", "ModelConfig"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from train import model

        return getattr(model, name)
    raise AttributeError(f"module 'train' has no attribute {name!r}")

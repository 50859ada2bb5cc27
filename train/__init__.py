"""Training side of edge-infer (needs torch): the model, MNIST loading and the trainer.

Importing the package itself is cheap (no torch): edge-train parses its options, and answers Ctrl-C during
start-up, before torch is loaded. DigitRNN and ModelConfig load train.model on first use.
"""

from __future__ import annotations

from typing import Any

CELLS = ("rnn", "gru", "lstm")
# Torch's CPU threads for training. One is fastest for this model size and stays fast on a busy machine
# (benchmarks/training.py, "threads"); the result depends on it, so checkpoints and the bundle record it.
DEFAULT_THREADS = 1

__all__ = ["CELLS", "DEFAULT_THREADS", "DigitRNN", "ModelConfig"]


def __getattr__(name: str) -> Any:
    if name in ("DigitRNN", "ModelConfig"):
        from train import model

        return getattr(model, name)
    raise AttributeError(f"module 'train' has no attribute {name!r}")

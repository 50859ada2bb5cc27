"""Training side of edge-infer (needs torch): the model, MNIST loading and the trainer."""
from train.model import CELLS, DigitRNN, ModelConfig

__all__ = ["CELLS", "DigitRNN", "ModelConfig"]

"""The digit classifier: a recurrent layer reads the 28 image rows as 28 time steps, then a Linear layer
classifies the last step's output. This is the one definition of the model; export/ rebuilds it time-major."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from edge_infer.model_info import CLASSES, PIXELS  # the shapes both sides share
from train import CELLS


@dataclass(frozen=True)
class ModelConfig:
    cell: str = "rnn"
    hidden: int = 128
    layers: int = 1

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, not {self.cell!r}")
        if self.hidden < 1 or self.layers < 1:
            raise ValueError("hidden and layers must be positive")

    def to_dict(self) -> dict:
        return asdict(self)


class DigitRNN(nn.Module):
    """Images in, logits out.

    batch_first=True reads [N, 28, 28] (how we train, like the reference notebook); batch_first=False reads
    [28, N, 28] (time-major, how we export: the ONNX exporter never sees the batch_first path).
    Both layouts share parameter names, so one state_dict loads into either.
    """

    def __init__(self, config: ModelConfig, batch_first: bool = True) -> None:
        super().__init__()
        self.config = config
        self.batch_first = batch_first
        recurrent = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[config.cell]
        extra = {"nonlinearity": "relu"} if config.cell == "rnn" else {}
        self.rnn = recurrent(PIXELS, config.hidden, config.layers, batch_first=batch_first, **extra)
        self.fc = nn.Linear(config.hidden, CLASSES)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(rows)
        last = out[:, -1] if self.batch_first else out[-1]
        return self.fc(last)

    def identity_recurrent_init(self) -> None:
        """IRNN init (Le, Jaitly & Hinton 2015): W_hh = I and zero biases let a ReLU RNN carry its state
        across 28 steps from the first update, which makes it train several times faster."""
        with torch.no_grad():
            for name, param in self.rnn.named_parameters():
                if name.startswith("weight_hh"):
                    param.copy_(torch.eye(param.shape[0]))
                elif name.startswith("bias"):
                    param.zero_()

"""Confidence that means something: temperature scaling (Guo et al. 2017) and the measures it is judged by.

The default recipe fits the temperature on held-out data from several sources, so that confidence holds off
MNIST too (train.trainer.with_synthetic): held-out MNIST training images, a synthetic twin of each, and the
digits of the UNIPEN calibration writers (never trained on, nor reported on) drawn twice each."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from train.data import Split

EVAL_BATCH = 2000


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: |accuracy - mean confidence| in equal-width confidence bins, weighted."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def error_at_coverage(confidence: np.ndarray, correct: np.ndarray, coverage: float = 0.95) -> float:
    """Error rate on the most confident `coverage` fraction of the answers (the rest answered "not sure")."""
    keep = np.argsort(-confidence, kind="stable")[: max(1, int(round(coverage * len(confidence))))]
    return float(1.0 - correct[keep].mean())


@torch.no_grad()
def fit_temperature(model: torch.nn.Module, split: Split, device: torch.device) -> dict:
    """The T minimising the held-out NLL of softmax(logits / T), searched on a log grid (one parameter:
    a grid is exact enough and has no optimiser state to get wrong); with the ECE before and after."""
    model.eval()
    logits = torch.cat(
        [model(split.floats(slice(i, i + EVAL_BATCH)).to(device)).cpu() for i in range(0, len(split), EVAL_BATCH)]
    ).double()
    labels = split.labels
    grid = torch.exp(torch.linspace(math.log(0.25), math.log(4.0), 401, dtype=torch.float64))  # grid[200] = 1
    nll = torch.stack([F.cross_entropy(logits / t, labels) for t in grid])
    temperature = float(grid[int(nll.argmin())])

    def ece_at(t: float) -> float:
        confidence, predicted = (logits / t).softmax(1).max(1)
        return ece(confidence.numpy(), (predicted == labels).numpy())

    return {
        "temperature": round(temperature, 4),
        "images": len(split),
        "nll_before": round(float(nll[200]), 5),
        "nll_after": round(float(nll.min()), 5),
        "ece_before": round(ece_at(1.0), 5),
        "ece_after": round(ece_at(temperature), 5),
    }

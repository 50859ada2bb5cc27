"""What a run made, in forms people read: the model summary (model.txt), the recipe as key=value pairs,
and report.png (where the model errs on MNIST test: confusion matrix, per-digit accuracy, and the most
confidently wrong digits), with the numbers it is drawn from in report.json.

    edge-train --report --out runs/rnn      # redraw report.png from a finished run, no training
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from train.data import Split
from train.model import CLASSES, DigitRNN, ModelConfig

REPORT_PNG, REPORT_JSON, MODEL_TXT = "report.png", "report.json", "model.txt"
WORST = 24  # most confidently wrong test digits shown
EVAL_BATCH = 2000


# -- model.txt and the header ----------------------------------------------------------------------


def model_summary(model: nn.Module) -> str:
    """print(model), then every parameter with its shape and size, and the total (like torchinfo, briefly)."""
    config = getattr(model, "config", None)
    lines = ([f"{config}"] if config is not None else []) + [
        str(model),
        "",
        f"{'parameter':<24} {'shape':<16} {'count':>9}",
    ]
    total = 0
    for name, param in model.named_parameters():
        lines.append(f"{name:<24} {list(param.shape)!s:<16} {param.numel():>9,}")
        total += param.numel()
    lines.append(f"{'total':<24} {'':<16} {total:>9,}")
    return "\n".join(lines) + "\n"


OFF_WHEN_ZERO = frozenset({"weight_decay", "synthetic", "calibration_images", "unipen"})  # 0 means the option is off


def recipe_text(recipe, cell: str) -> str:
    """The recipe as readable key=value pairs, only what applies: switched-off options are left out, and
    identity_init only shows for the ReLU rnn cell (the only one it changes)."""
    parts = []
    for f in fields(recipe):
        value = getattr(recipe, f.name)
        if value is None or value is False or (f.name in OFF_WHEN_ZERO and not value):
            continue
        if f.name == "identity_init" and cell != "rnn":
            continue
        if f.name == "one_cycle":
            parts.append("schedule=one-cycle")
        elif value is True:
            parts.append(f.name)
        else:
            parts.append(f"{f.name}={value:g}" if isinstance(value, float) else f"{f.name}={value}")
    if not recipe.one_cycle:
        parts.append("schedule=constant")
    return " ".join(parts)


EMA_NOTE = (
    "note: test accuracy is measured on the moving average of the weights (EMA) at the end of each "
    "epoch, train accuracy on the changing raw weights during it, so test can exceed train early on"
)


# -- where it errs ---------------------------------------------------------------------------------


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int = CLASSES) -> np.ndarray:
    """counts[true, predicted] (int64 [classes, classes])."""
    counts = np.zeros((classes, classes), np.int64)
    np.add.at(counts, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return counts


@torch.no_grad()
def probabilities(model: DigitRNN, split: Split, device: str | torch.device = "cpu") -> np.ndarray:
    """Softmax probabilities float32 [N, 10] over a whole split."""
    model.eval()
    out = []
    for start in range(0, len(split), EVAL_BATCH):
        images = split.floats(slice(start, start + EVAL_BATCH)).to(device)
        out.append(torch.softmax(model(images), dim=1).cpu().numpy())
    return np.concatenate(out)


@dataclass
class ErrorReport:
    confusion: np.ndarray  # counts[true, predicted] on the whole test split
    per_digit_accuracy: list[float]
    accuracy: float
    worst: list[dict]  # the most confidently wrong: index, true, predicted, confidence

    def to_json(self) -> dict:
        return {
            "test_images": int(self.confusion.sum()),
            "accuracy": self.accuracy,
            "confusion": self.confusion.tolist(),
            "per_digit_accuracy": self.per_digit_accuracy,
            "most_confident_errors": self.worst,
        }


def error_report(probs: np.ndarray, labels: np.ndarray, worst: int = WORST) -> ErrorReport:
    labels = np.asarray(labels, np.int64)
    predicted = probs.argmax(1)
    confusion = confusion_matrix(labels, predicted)
    per_digit = (np.diag(confusion) / np.maximum(confusion.sum(1), 1)).round(6).tolist()
    wrong = np.flatnonzero(predicted != labels)
    order = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:worst]
    errors = [
        {
            "index": int(i),
            "true": int(labels[i]),
            "predicted": int(predicted[i]),
            "confidence": round(float(probs[i, predicted[i]]), 6),
        }
        for i in order
    ]
    return ErrorReport(confusion, per_digit, round(float((predicted == labels).mean()), 6), errors)


def write_report(run_dir: Path, model: DigitRNN, test: Split, device: str | torch.device = "cpu") -> ErrorReport:
    """report.json and report.png in run_dir, for `model` on the test split."""
    from train.trainer import atomic_write

    report = error_report(probabilities(model, test, device), test.labels.numpy())
    run_dir = Path(run_dir)
    text = json.dumps(report.to_json(), indent=1) + "\n"
    atomic_write(run_dir / REPORT_JSON, lambda tmp: Path(tmp).write_text(text))
    plot_report(report, test.images.numpy(), run_dir / REPORT_PNG)
    return report


def plot_report(report: ErrorReport, images: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    from train.trainer import atomic_write

    confusion = report.confusion
    fig = plt.figure(figsize=(15, 6.2))
    grid = fig.add_gridspec(2, 3, width_ratios=[1.15, 0.75, 1.25], height_ratios=[1, 1], wspace=0.3, hspace=0.35)
    ax = fig.add_subplot(grid[:, 0])
    errors = np.ma.masked_where(np.eye(CLASSES, dtype=bool) | (confusion == 0), confusion)
    if errors.count():
        ax.imshow(errors, cmap="Reds", norm=LogNorm(vmin=1, vmax=max(2, int(errors.max()))))
    ax.imshow(np.ma.masked_where(~np.eye(CLASSES, dtype=bool), np.ones_like(confusion)), cmap="Greys", vmin=0, vmax=8)
    for t in range(CLASSES):
        for p in range(CLASSES):
            if confusion[t, p]:
                on_diagonal = t == p
                ax.text(
                    p,
                    t,
                    str(confusion[t, p]),
                    ha="center",
                    va="center",
                    fontsize=7 if on_diagonal else 9,
                    color="#888888" if on_diagonal else "black",
                    fontweight="normal" if on_diagonal else "bold",
                )
    ax.set_xticks(range(CLASSES))
    ax.set_yticks(range(CLASSES))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.set_title(f"confusion on {confusion.sum():,} MNIST test images (errors in red)", fontsize=10)

    bars = fig.add_subplot(grid[:, 1])
    accuracy = np.array(report.per_digit_accuracy) * 100
    bars.barh(range(CLASSES), accuracy, color="#4a6fa5")
    low = max(0.0, float(np.floor(accuracy.min() / 5) * 5) - 5)
    bars.set_xlim(low, 100)
    for digit, value in enumerate(accuracy):
        bars.text(value, digit, f" {value:.1f}", va="center", fontsize=8, clip_on=True, ha="right", color="white")
    bars.set_yticks(range(CLASSES))
    bars.invert_yaxis()
    bars.set_xlabel("accuracy (%)")
    bars.set_ylabel("true digit")
    bars.set_title(f"per-digit accuracy (all: {report.accuracy:.2%})", fontsize=10)

    worst = report.worst
    cols = 8
    sub = grid[:, 2].subgridspec(max(1, (len(worst) + cols - 1) // cols), cols, hspace=0.6)
    for k, error in enumerate(worst):
        cell = fig.add_subplot(sub[k // cols, k % cols])
        cell.imshow(images[error["index"]], cmap="gray_r", vmin=0, vmax=255)
        cell.set_title(f"{error['true']}→{error['predicted']} {error['confidence']:.0%}", fontsize=8)
        cell.axis("off")
    if worst:
        fig.text(0.81, 0.96, "most confidently wrong (true→predicted, confidence)", ha="center", fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.99, top=0.9, bottom=0.09)
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)


def load_run_model(checkpoint: Path) -> DigitRNN:
    """The model a run ships (the EMA weights when it has them), from its checkpoint."""
    from train.trainer import load_checkpoint

    state = load_checkpoint(checkpoint)
    model = DigitRNN(ModelConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    return model.eval()


# -- fp32 vs int8 ----------------------------------------------------------------------------------


def prediction_changes(before: np.ndarray, after: np.ndarray, labels: np.ndarray, top: int = 5) -> str:
    """One line: how many predictions a change of model (fp32 -> int8) flips, and which digit pairs."""
    before, after, labels = (np.asarray(a, np.int64) for a in (before, after, labels))
    changed = before != after
    if not changed.any():
        return f"int8 vs fp32: all {len(labels):,} MNIST test predictions are the same"
    broken = int((changed & (before == labels)).sum())
    fixed = int((changed & (after == labels)).sum())
    pairs = Counter(zip(before[changed].tolist(), after[changed].tolist(), strict=False)).most_common(top)
    listed = ", ".join(f"{a}→{b} ×{n}" for (a, b), n in pairs)
    return (
        f"int8 vs fp32: {int(changed.sum())} of {len(labels):,} MNIST test predictions differ "
        f"({broken} were right in fp32, {fixed} are right in int8); fp32→int8: {listed}"
    )

"""Thread policy: `Classifier()`'s default thread choice beside 1 and 2 onnxruntime threads, at batch 1, 64 and
1024, on a quiet machine and with one core kept busy by another process.

    python benchmarks/threads.py [--data-dir ../shared/data] [--quick]

The bundled fp32 model, `classify` of real MNIST test digits (preprocessed once). "Busy": a second process
spinning in a Python `while True: pass` loop for the whole state (what another job on the machine does).
Within each state the three settings take turns in rounds, with a pause before each turn (a multi-thread
session's workers spin on for a moment after a run); medians. The target: the default within 10 % of
the better of 1 and 2 threads, in every state and batch.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from benchlib import add_common_args, machine_header, median, section, table, target, timed

BATCHES = (1, 64, 1024)
REPS = {1: 2000, 64: 300, 1024: 30}  # timed calls per setting; --quick: a tenth
BUDGET = 4.0  # seconds per setting and batch at most (each still gets one call per round)
TARGET_SLOWER = 1.10  # the default at most this many times the best setting's time
SETTINGS = {"1 thread": 1, "2 threads": 2, "default (threads=None)": None}
BUSY_LOOP = "while True: pass"
SETTLE_S = 0.5  # pause before each setting's turn (0.05 s was too short: the next setting still ran ~1.5x slower)


@contextmanager
def busy_core(busy: bool) -> Iterator[None]:
    """One core kept busy by another process for the duration, when busy."""
    if not busy:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-S", "-c", BUSY_LOOP])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def mnist_digits(data_dir: Path, count: int) -> np.ndarray:
    """count real MNIST test digits, preprocessed as the runtime does (float32 [count, 28, 28])."""
    from edge_infer.preprocess import preprocess

    raw = data_dir / "MNIST" / "raw"
    images = np.fromfile(raw / "t10k-images-idx3-ubyte", np.uint8, offset=16).reshape(-1, 28, 28)[:count]
    return np.stack([preprocess(image) for image in images])


def measure(digits: np.ndarray, quick: bool) -> dict[tuple[str, int, str], float]:
    """Median seconds per classify call, by (state, batch, setting)."""
    from edge_infer import Classifier

    classifiers = {name: Classifier(threads=threads) for name, threads in SETTINGS.items()}
    seconds: dict[tuple[str, int, str], float] = {}
    for state in ("quiet", "one core busy"):
        with busy_core(state != "quiet"):
            for batch in BATCHES:
                x = digits[:batch]
                calls = {name: (lambda c=c, x=x: c.classify(x)) for name, c in classifiers.items()}
                reps = max(10, REPS[batch] // (10 if quick else 1))
                # a pause before each turn: a multi-thread session's workers spin on after its run returns
                # (allow_spinning), which would slow whichever setting comes next
                pause = {name: (lambda: time.sleep(SETTLE_S)) for name in calls}
                samples = timed(calls, reps=reps, rounds=10, warmup=2, before=pause, budget=BUDGET * len(calls))
                for name in SETTINGS:
                    seconds[(state, batch, name)] = median(samples[name])
    return seconds


def run(data_dir: Path, quick: bool) -> str:
    from edge_infer.classifier import usable_cpus

    digits = mnist_digits(data_dir, max(BATCHES))
    seconds = measure(digits, quick)
    rows, checks = [], ""
    for (state, batch, name), t in seconds.items():
        best = min(seconds[(state, batch, other)] for other in SETTINGS if SETTINGS[other] is not None)
        rows.append([state, batch, name, f"{t * 1e6 / batch:,.1f}", f"{batch / t:,.0f}", f"{t / best:.2f}x"])
        if SETTINGS[name] is None:
            checks += target(
                f"default within {TARGET_SLOWER - 1:.0%} of the best thread count ({state}, batch {batch})",
                f"{t / best:.2f}x the best",
                t / best <= TARGET_SLOWER,
            )
    results = table(["state", "batch", "setting", "µs per image (median)", "images/s", "vs best of 1/2"], rows)
    about = (
        f"`Classifier(threads=...).classify(digits)` on real MNIST test digits, bundled fp32 model, "
        f"{usable_cpus()} usable cores. The three settings take turns in 10 rounds per state and batch; medians. "
        f"One core busy: another process spinning (`python -c '{BUSY_LOOP}'`) throughout that state."
    )
    return section("1b. Thread policy: Classifier() defaults, quiet and with one core busy", about, results, checks)


def main() -> None:
    args = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args()
    print(machine_header("edge-infer thread policy", args.quick) + "\n" + run(args.data_dir, args.quick))


if __name__ == "__main__":
    main()

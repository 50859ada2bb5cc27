"""Training benchmark: how fast each recipe reaches its accuracy, read from edge-train's history.json.

    python benchmarks/training.py [--data-dir ../shared/data] [--out bench-out]

Runs edge-train (as `python -m train`, this interpreter) for each recipe below into OUT/train-NAME, unless
that directory already holds a finished history.json of today's recipe (then it is reused and the report
says so; a run that was cut short is resumed; one of an older recipe is removed and trained anew). Times
come from history.json: cumulative training seconds per epoch, measured by the trainer itself, evaluation
excluded. Expect ~10 minutes for all three on an idle 2-core CPU (seed ~6+ min). --quick changes nothing.

The threads part (always measured anew, ~3 minutes; `--threads-only` runs just it) times a slice of the
default run (THREAD_SLICE) with --threads 1 and 2, on the machine as it is ("quiet") and beside another
2-thread CPU job (a second edge-train --threads 2, "under load"), taking turns, and extrapolates to the
whole default run by batch count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchlib import ROOT, add_common_args, machine_header, run_child, section, table, target

from train import DEFAULT_THREADS
from train.trainer import load_checkpoint, preset_recipe

# name: (what it is, edge-train options beyond the shared ones, the preset those options use)
RUNS: dict[str, tuple[str, list[str], str]] = {
    "seed": ("(a) `--preset seed`: the reference notebook", ["--preset", "seed"], "seed"),
    "default": ("(b) default recipe", [], "default"),
    "gru": ("(c) gru, default recipe", ["--cell", "gru"], "default"),
    "lstm": ("(d) lstm, default recipe", ["--cell", "lstm"], "default"),
}
GATED = ("gru", "lstm")


@dataclass
class Run:
    name: str
    dir: Path
    command: list[str]  # as a user would type it
    history: list[dict]
    source: str  # "trained by this run ..." or "cached ..."

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoint.pt"

    def seconds_to(self, accuracy: float) -> tuple[float, int] | None:
        """(cumulative training seconds, epoch) when test accuracy first reached `accuracy`."""
        for record in self.history:
            if record["test_acc"] >= accuracy:
                return record["seconds"], record["epoch"]
        return None


def read_history(run_dir: Path) -> list[dict]:
    try:
        return json.loads((run_dir / "history.json").read_text())
    except (OSError, ValueError):
        return []


def _cell(command: list[str]) -> str:
    return command[command.index("--cell") + 1] if "--cell" in command else "rnn"


def _stale(run_dir: Path, preset: str, command: list[str]) -> bool:
    """Whether run_dir holds a run of another recipe or cell (e.g. made before the recipe changed)."""
    if not (run_dir / "checkpoint.pt").exists():
        return False
    state = load_checkpoint(run_dir / "checkpoint.pt")
    cell = _cell(command)
    return state["recipe"] != asdict(preset_recipe(preset, cell)) or state["model_config"]["cell"] != cell


def ensure_run(name: str, out: Path, data_dir: Path) -> Run:
    """The finished run NAME under out: reused if there, else trained now (resumed if cut short)."""
    what, options, preset = RUNS[name]
    run_dir = out / f"train-{name}"
    command = [
        "edge-train",
        *options,
        "--out",
        str(run_dir),
        "--data-dir",
        str(data_dir),
        "--no-download",
        "--quiet",
        "--seed",
        "0",
    ]
    if _stale(run_dir, preset, command):
        print(f"[training] {run_dir} was trained with another recipe than today's; removing it", file=sys.stderr)
        shutil.rmtree(run_dir)
    history = read_history(run_dir)
    if len(history) >= preset_recipe(preset, _cell(command)).epochs:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime((run_dir / "history.json").stat().st_mtime))
        return Run(name, run_dir, command, history, f"cached history.json ({stamp})")

    resume = ["--resume"] if (run_dir / "checkpoint.pt").exists() else []
    print(
        f"[training] {' '.join(command + resume)} ... (see benchmarks/README.md for how long)",
        file=sys.stderr,
        flush=True,
    )
    child = run_child([sys.executable, "-m", "train", *command[1:], *resume])
    history = read_history(run_dir)
    source = f"trained by this run ({child.seconds:.0f} s wall incl. data loading and evaluation"
    return Run(name, run_dir, command, history, source + (", resumed)" if resume else ")"))


def _pct(x: float) -> str:
    return f"{x:.2%}"


def report(runs: dict[str, Run]) -> str:
    rows = []
    for name, run in runs.items():
        last = run.history[-1]
        reach = {acc: run.seconds_to(acc) for acc in (0.98, 0.99)}
        rows.append(
            [
                RUNS[name][0],
                len(run.history),
                _pct(last["test_acc"]),
                *(f"{r[0]:.1f} s (epoch {r[1]})" if r else "never" for r in reach.values()),
                f"{last['seconds'] / len(run.history):.1f}",
                f"{last['seconds']:.1f}",
                run.source,
            ]
        )
    lines = table(
        ["run", "epochs", "final test acc", "time to 98.0 %", "time to 99.0 %", "s / epoch", "training s", "history"],
        rows,
    )
    commands = "Commands (each `--data-dir DATA --no-download --quiet --seed 0`):\n" + "".join(
        f"- {RUNS[name][0].split(':')[0]}: `{' '.join(run.command[: run.command.index('--data-dir')])}`\n"
        for name, run in runs.items()
    )

    checks = []
    if "default" in runs:
        run = runs["default"]
        reach, last = run.seconds_to(0.98), run.history[-1]
        checks.append(
            target(
                "default recipe >= 98.0 % within 20 s",
                f"{reach[0]:.1f} s" if reach else "never reached",
                bool(reach and reach[0] <= 20),
            )
        )
        checks.append(
            target(
                "default recipe >= 98.8 % at the end, within 60 s",
                f"{_pct(last['test_acc'])} after {last['seconds']:.1f} s",
                last["test_acc"] >= 0.988 and last["seconds"] <= 60,
            )
        )
    if "seed" in runs:
        run = runs["seed"]
        last = run.history[-1]
        checks.append(
            target(
                "seed preset >= 97.8 % after 30 epochs",
                f"{_pct(last['test_acc'])} after {len(run.history)} epochs",
                last["test_acc"] >= 0.978 and len(run.history) == 30,
            )
        )
    reached = {name: runs[name].seconds_to(0.99) for name in GATED if name in runs}
    if reached:
        # the best gated cell: the one that reaches 99 % first (None: never)
        best = min(reached, key=lambda name: reached[name][0] if reached[name] else float("inf"))
        reach = reached[best]
        checks.append(
            target(
                f"best gated cell ({best}) >= 99.0 % within 3 minutes",
                f"{reach[0]:.1f} s (epoch {reach[1]})" if reach else "never reached",
                bool(reach and reach[0] <= 180),
            )
        )
    note = (
        "Times are edge-train's own: cumulative training seconds at the end of each epoch (evaluation "
        "excluded), from each run's history.json; 'time to' is the first epoch whose test accuracy reached it."
    )
    return section("4. Training", note, lines, commands, "".join(checks))


THREAD_SLICE = 10000  # training images in the timed slice of the default run (one epoch of it)
THREAD_ROUNDS = 3
LOAD_TARGET = 1.5  # default training under load <= 1.5x its quiet time


def _train_seconds(out: Path, data_dir: Path, threads: int) -> float:
    """Training seconds (the trainer's clock) of one epoch of the default recipe on THREAD_SLICE images."""
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        run_child(
            [
                sys.executable,
                "-m",
                "train",
                "--limit-train",
                str(THREAD_SLICE),
                "--epochs",
                "1",
                "--threads",
                str(threads),
                "--out",
                f"{tmp}/run",
                "--data-dir",
                str(data_dir),
                "--no-download",
                "--quiet",
            ]
        )
        return read_history(Path(tmp, "run"))[-1]["seconds"]


class _LoadJob:
    """Another 2-thread CPU job beside the measured one: a long edge-train --threads 2, stopped afterwards."""

    def __init__(self, out: Path, data_dir: Path) -> None:
        self.dir = tempfile.mkdtemp(dir=out)
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "train",
                "--threads",
                "2",
                "--epochs",
                "100",
                "--out",
                f"{self.dir}/run",
                "--data-dir",
                str(data_dir),
                "--no-download",
                "--quiet",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(8)  # past its start-up (imports, loading MNIST): training when the measured run starts

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def threads_report(out: Path, data_dir: Path, rounds: int = THREAD_ROUNDS) -> str:
    out.mkdir(parents=True, exist_ok=True)
    samples: dict[tuple[int, bool], list[float]] = {(t, load): [] for load in (False, True) for t in (1, 2)}
    loads: list[str] = []
    for _ in range(rounds):  # quiet and loaded, 1 and 2 threads, taking turns
        for loaded in (False, True):
            job = _LoadJob(out, data_dir) if loaded else None
            try:
                for threads in (1, 2):
                    loads.append(f"{os.getloadavg()[0]:.1f}")
                    samples[(threads, loaded)].append(_train_seconds(out, data_dir, threads))
            finally:
                if job is not None:
                    job.stop()
    slice_batches = math.ceil(THREAD_SLICE / preset_recipe("default", "rnn").batch_size)
    recipe = preset_recipe("default", "rnn")
    full_batches = recipe.epochs * math.ceil(60000 / recipe.batch_size)
    rows, median = [], {key: statistics.median(v) for key, v in samples.items()}
    for (threads, loaded), seconds in median.items():
        quiet = median[(threads, False)]
        rows.append(
            [
                f"{threads}" + (" (default)" if threads == DEFAULT_THREADS else ""),
                "under load" if loaded else "quiet",
                f"{seconds:.2f}",
                " / ".join(f"{x:.2f}" for x in samples[(threads, loaded)]),
                f"{seconds / slice_batches * 1000:.1f}",
                f"{seconds / slice_batches * full_batches:.0f}",
                f"{seconds / quiet:.2f}×",
            ]
        )
    lines = table(
        [
            "--threads",
            "machine",
            f"training s ({THREAD_SLICE} images, median)",
            "each round",
            "ms / batch",
            "extrapolated s, whole default run",
            "vs quiet",
        ],
        rows,
    )
    ratio = median[(DEFAULT_THREADS, True)] / median[(DEFAULT_THREADS, False)]
    note = (
        f"One epoch of the default recipe on the first {THREAD_SLICE} training images ({slice_batches} batches), "
        f"`edge-train --limit-train {THREAD_SLICE} --epochs 1 --threads N`; 'under load': beside "
        "`edge-train --threads 2` training at the same time; extrapolated by batch count to the whole default "
        f"run ({full_batches} batches). {rounds} rounds; 1-minute load average before each run: {', '.join(loads)}."
    )
    check = target(
        f"default training (--threads {DEFAULT_THREADS}) under load <= {LOAD_TARGET}× its quiet time",
        f"{ratio:.2f}×",
        ratio <= LOAD_TARGET,
    )
    return section("4b. Training threads", note, lines, check)


def run(out: Path, data_dir: Path, names: tuple[str, ...] = tuple(RUNS)) -> str:
    return report({name: ensure_run(name, out, data_dir) for name in names}) + "\n" + threads_report(out, data_dir)


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--only", choices=list(RUNS), action="append", help="just these runs (repeatable)")
    parser.add_argument("--threads-only", action="store_true", help="just the threads part (~3 minutes)")
    args = parser.parse_args()
    if args.threads_only:
        body = threads_report(args.out, args.data_dir, 1 if args.quick else THREAD_ROUNDS)
    else:
        body = run(args.out, args.data_dir, tuple(args.only or RUNS))
    print(machine_header("edge-infer training benchmark", args.quick) + "\n" + body)


if __name__ == "__main__":
    main()

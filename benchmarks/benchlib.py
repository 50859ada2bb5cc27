"""The few things every benchmark shares: paths and arguments, the machine description, one timing loop,
one way to run a child process (wall time + peak RSS via os.wait4), and the markdown output.

Timing: `timed` times every call on its own with perf_counter and lets the measured things take turns in
rounds, so that a shared machine's slow moments hit all of them alike; report medians of those samples.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # the project root
DEFAULT_DATA = ROOT.parent / "shared" / "data"  # ../shared/data, beside the project
DEFAULT_OUT = ROOT / "bench-out"  # git-ignored

if str(ROOT) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the root, on sys.path
    sys.path.insert(1, str(ROOT))

from export.int8_exact import cpu_kind  # noqa: E402  (no torch or onnx: the runtime-only benchmarks can use it)

# -----------------------------------------------------------------------------
# arguments


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA,
        help="MNIST root in torchvision layout (DIR/MNIST/raw/); default ../shared/data",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="where exported models, PNGs and training runs go (reused by reruns)",
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of the repetitions: for trying the scripts")
    return parser


# -----------------------------------------------------------------------------
# timing


def timed(
    calls: dict[Any, Callable[[], Any]],
    reps: int,
    rounds: int = 10,
    warmup: int = 3,
    before: dict[Any, Callable[[], Any]] | None = None,
    budget: float = float("inf"),
) -> dict[Any, list[float]]:
    """Seconds taken by each of `reps` calls of every callable; the callables take turns, `rounds` times.
    A turn ends early once it has used its share of `budget` seconds (each callable gets at least one
    call per round). before[name], if given, runs untimed before each turn of that callable."""
    before = before or {}
    noop: Callable[[], Any] = lambda: None  # noqa: E731
    for name, call in calls.items():
        before.get(name, noop)()
        for _ in range(warmup):
            call()
    samples: dict[Any, list[float]] = {name: [] for name in calls}
    per_round = max(1, -(-reps // rounds))
    for _ in range(min(rounds, reps)):
        for name, call in calls.items():
            before.get(name, noop)()
            spent = 0.0
            for _ in range(per_round):
                start = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - start)
                spent += samples[name][-1]
                if spent > budget / rounds:
                    break
    return samples


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


@dataclass
class ChildRun:
    seconds: float  # wall time from spawn to exit
    peak_rss: int  # bytes: ru_maxrss of the child (and of its own children, if it had any)
    stdout: bytes | None


# Spawns argv, waits for it with os.wait4 and writes "seconds ru_maxrss(KiB) status" to the fd in argv[1].
# Why a wrapper: Linux carries the spawning process's peak RSS over into the child across exec, so a child
# spawned straight from this (torch-sized) process would report ours. The wrapper is a bare `python -S`
# (about 9 MiB, which is thus the floor of what this reports: below anything measured here), and it
# times the child alone, not its own start-up.
_WAIT4_WRAPPER = """
import os, sys, time
fd = int(sys.argv[1]); os.set_inheritable(fd, False)
start = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
os.write(fd, f"{time.perf_counter() - start} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}".encode())
"""


def run_child(argv: Sequence[str], capture: bool = False, cwd: Path = ROOT) -> ChildRun:
    """Run argv to completion (stdout to /dev/null unless captured): its wall time and peak RSS, from
    os.wait4 in a tiny wrapper process. Raises RuntimeError, with the end of its stderr, when it fails."""
    read, write = os.pipe()
    with tempfile.TemporaryFile() as stderr:
        wrapper = subprocess.Popen(
            [sys.executable, "-S", "-c", _WAIT4_WRAPPER, str(write), *argv],
            cwd=cwd,
            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
            stderr=stderr,
            pass_fds=(write,),
        )
        os.close(write)
        out = wrapper.stdout.read() if wrapper.stdout else None
        wrapper.wait()
        with os.fdopen(read, "rb") as report:
            fields = report.read().split()
        returncode = int(fields[2]) if len(fields) == 3 else wrapper.returncode
        if returncode != 0:
            stderr.seek(0)
            tail = stderr.read().decode(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"`{' '.join(argv)}` exited with {returncode}: " + " / ".join(tail))
    return ChildRun(float(fields[0]), int(fields[1]) * 1024, out)


def console_script(name: str) -> str:
    """The installed console script beside this interpreter (edge-infer, edge-train, ...)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        sys.exit(f"error: {path} not found; install the project (pip install -e '.[train]') into this interpreter")
    return str(path)


# -----------------------------------------------------------------------------
# the machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_header(title: str, quick: bool) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    rows = [
        ["CPU", f"{_cpu_model()} ({cpu_kind()})"],
        ["cores", f"{cores} usable ({os.cpu_count()} online)"],
        ["load average at start (1/5/15 min)", load],
        ["OS", f"{platform.system()} {platform.release()}"],
        ["python", platform.python_version()],
        [
            "numpy / onnxruntime / torch / onnx",
            " / ".join(_version(p) for p in ("numpy", "onnxruntime", "torch", "onnx")),
        ],
        ["edge-infer commit", _git_commit()],
        [
            "measured",
            time.strftime("%Y-%m-%d %H:%M:%S %Z")
            + ("; --quick: a tenth of the repetitions, medians are rougher" if quick else ""),
        ],
    ]
    return f"# {title}\n\n" + table(["machine", ""], rows)


# -----------------------------------------------------------------------------
# markdown


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; a column whose first cell starts with a digit (bold or not) is right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    numeric = [bool(cells) and cells[0][i].lstrip("*")[:1].isdigit() for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def target(what: str, measured: str, ok: bool) -> str:
    """One line: a target, what was measured, and whether it is met."""
    return f"- target {what}: {measured} — **{'met' if ok else 'NOT met'}**\n"


def section(title: str, *parts: str) -> str:
    return f"## {title}\n\n" + "\n".join(p.rstrip("\n") + "\n" for p in parts if p)


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"

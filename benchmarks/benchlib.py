"""The few things every benchmark shares: paths and arguments, the machine description, one timing loop,
one way to run a child process (wall time + exact peak RSS), and the markdown output.

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
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]  # the project root
DEFAULT_DATA = ROOT.parent / "shared" / "data"  # ../shared/data, beside the project
DEFAULT_OUT = ROOT / "bench-out"  # git-ignored

if str(ROOT) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the root, on sys.path
    sys.path.insert(1, str(ROOT))


# -----------------------------------------------------------------------------
# arguments

def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                        help="MNIST root in torchvision layout (DIR/MNIST/raw/); default ../shared/data")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="where exported models, PNGs and training runs go (reused by reruns)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the repetitions: for trying the scripts")
    return parser


# -----------------------------------------------------------------------------
# timing

def timed(calls: dict[str, Callable[[], Any]], reps: int, rounds: int = 10, warmup: int = 3
          ) -> dict[str, list[float]]:
    """Seconds taken by each of `reps` calls of every callable; the callables take turns, `rounds` times."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    per_round = max(1, -(-reps // rounds))
    for _ in range(min(rounds, reps)):
        for name, call in calls.items():
            for _ in range(per_round):
                start = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - start)
    return samples


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


@dataclass
class ChildRun:
    seconds: float  # wall time from spawn to exit
    peak_rss: int  # bytes: the child's peak resident set (ru_maxrss from wait4, exact per child)
    stdout: bytes | None


def run_child(argv: Sequence[str], capture: bool = False, cwd: Path = ROOT) -> ChildRun:
    """Run argv to completion (stdout to /dev/null unless captured); its wall time and peak RSS, from
    wait4's rusage of exactly this child. Raises RuntimeError, with its stderr, when it fails."""
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        child = subprocess.Popen(list(argv), cwd=cwd, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                                 stderr=stderr)
        out = child.stdout.read() if child.stdout else None
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here; tell Popen so it won't wait again
        if child.returncode != 0:
            stderr.seek(0)
            tail = stderr.read().decode(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"`{' '.join(argv)}` exited with {child.returncode}: " + " / ".join(tail))
    return ChildRun(seconds, usage.ru_maxrss * 1024, out)


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


def _cpu_flags(wanted: tuple[str, ...] = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")) -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return " ".join(f for f in wanted if f in have) or "none of " + " ".join(wanted)
    except OSError:
        pass
    return "unknown"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_header(title: str, quick: bool) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    rows = [
        ["CPU", f"{_cpu_model()} ({_cpu_flags()})"],
        ["cores", f"{cores} usable ({os.cpu_count()} online)"],
        ["load average at start (1/5/15 min)", load],
        ["OS", f"{platform.system()} {platform.release()}"],
        ["python", platform.python_version()],
        ["numpy / onnxruntime / torch", " / ".join(_version(p) for p in ("numpy", "onnxruntime", "torch"))],
        ["edge-infer commit", _git_commit()],
        ["measured", time.strftime("%Y-%m-%d %H:%M:%S %Z")
         + ("; --quick: a tenth of the repetitions, medians are rougher" if quick else "")],
    ]
    return f"# {title}\n\n" + table(["machine", ""], rows)


# -----------------------------------------------------------------------------
# markdown

def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; a column whose first cell starts with a digit is right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    numeric = [bool(cells) and cells[0][i][:1].isdigit() for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def target(what: str, measured: str, ok: bool) -> str:
    """One line: a target, what was measured, and whether it is met."""
    return f"- target {what}: {measured} — **{'met' if ok else 'NOT met'}**\n"


def section(title: str, *parts: str) -> str:
    return f"## {title}\n\n" + "\n".join(p.rstrip("\n") + "\n" for p in parts if p)


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"

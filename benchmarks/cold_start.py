"""CLI cold start: wall time and peak RSS of one `edge-infer examples/mnist-7.png`, beside the floor
(`python -c "import onnxruntime, numpy, PIL"`) and `python -c "import torch"`.

    python benchmarks/cold_start.py [--quick]

Then where the time goes: `python -X importtime` of the same command (modules by cumulative import time, and
whether the option parser, OpenSSL's hashlib or unused Pillow plugins were imported), and the model load and
first prediction timed in-process.

Each is a fresh process; wall time is spawn to exit, peak RSS is ru_maxrss from os.wait4 (see
benchlib.run_child). The three commands take turns, after one untimed warm-up each so that the files are
in the page cache (a process cold start, not a disk cold start); medians.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

from benchlib import (
    ROOT,
    add_common_args,
    console_script,
    machine_header,
    median,
    mib,
    run_child,
    section,
    table,
    target,
    timed,
)

RUNS = 7  # per command; --quick: 5 (the least that makes a median worth printing)
TARGET_RATIO, TARGET_EXTRA_RSS = 1.25, 10 * 2**20  # against the floor, measured in the same run
# Modules the one-image path must not import (what they cost is why: see the issue on cold start)
AVOIDED = {
    "click": "the option parser",
    "_hashlib": "OpenSSL's hashlib",
    "PIL.ImageOps": "ImageOps",
    "PIL.EpsImagePlugin": "Pillow's other plugins",
    "multiprocessing": "worker processes",
    "json": "json",
}
PHASES = """
import time
t0 = time.perf_counter()
from edge_infer import Classifier
t1 = time.perf_counter()
classifier = Classifier()
t2 = time.perf_counter()
classifier.predict("examples/mnist-7.png")
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""


def breakdown() -> str:
    """-X importtime of one cold `edge-infer examples/mnist-7.png`, and the load/predict phases in-process."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "edge_infer", "examples/mnist-7.png"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    self_ms: dict[str, float] = {}
    for line in run.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \| \s*(\S+)", line)
        if match:  # each module's own time, summed per top-level package
            package = match.group(2).split(".")[0]
            self_ms[package] = self_ms.get(package, 0.0) + int(match.group(1)) / 1000
    imported = set(re.findall(r"\| +(\S+)$", run.stderr, re.M))
    top = sorted(self_ms.items(), key=lambda kv: -kv[1])[:10]
    rows = [[name, f"{ms:.1f}"] for name, ms in top] + [["all imports", f"{sum(self_ms.values()):.1f}"]]
    imports = table(["package (its modules' own import time, summed)", "import ms"], rows)
    avoided = ", ".join(
        f"{what} ({module}): {'imported' if module in imported else 'not imported'}" for module, what in AVOIDED.items()
    )
    phases = [
        float(x)
        for x in subprocess.run(
            [sys.executable, "-c", PHASES], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout.split()
    ]
    steps = table(
        ["phase (in-process, one cold run)", "ms"],
        [
            ["import edge_infer (onnxruntime, numpy, Pillow included)", f"{phases[0] * 1e3:.1f}"],
            ["Classifier(): sha256 check, session, probe run", f"{phases[1] * 1e3:.1f}"],
            ["first predict() of a PNG (plugin import, decode, preprocess, run)", f"{phases[2] * 1e3:.1f}"],
        ],
    )
    return imports + "\n" + steps + f"\nOn the one-image path: {avoided}.\n"


def run(quick: bool) -> str:
    cli, floor = "`edge-infer examples/mnist-7.png`", '`python -c "import onnxruntime, numpy, PIL"` (the floor)'
    commands = {
        cli: [console_script("edge-infer"), "examples/mnist-7.png"],
        floor: [sys.executable, "-c", "import onnxruntime, numpy, PIL"],
        '`python -c "import torch"`': [sys.executable, "-c", "import torch"],
    }
    peaks: dict[str, list[int]] = {name: [] for name in commands}

    def launch(name: str) -> None:
        peaks[name].append(run_child(commands[name]).peak_rss)

    calls = {name: (lambda name=name: launch(name)) for name in commands}
    samples = timed(calls, reps=5 if quick else RUNS, rounds=5 if quick else RUNS, warmup=1)
    seconds = {name: median(s) for name, s in samples.items()}
    rss = {name: median(p[1:]) for name, p in peaks.items()}  # p[0] is the warm-up's

    rows = [
        [name, f"{seconds[name]:.3f}", f"{min(samples[name]):.3f}", mib(rss[name]), len(samples[name])]
        for name in commands
    ]
    results = table(["command", "wall s (median)", "wall s (best)", "peak RSS (median)", "runs"], rows)
    ratio, extra = seconds[cli] / seconds[floor], rss[cli] - rss[floor]
    checks = target(
        f"cold start <= {TARGET_RATIO}x the floor's wall time and <= the floor + {mib(TARGET_EXTRA_RSS)}",
        f"{ratio:.2f}x ({seconds[cli]:.3f} s vs {seconds[floor]:.3f} s; best runs "
        f"{min(samples[cli]) / min(samples[floor]):.2f}x), {mib(rss[cli])} ({mib(extra)} over the floor)",
        ratio <= TARGET_RATIO and extra <= TARGET_EXTRA_RSS,
    )
    about = (
        "Fresh processes, started from the project root with stdout to /dev/null by a tiny wrapper that "
        "times each from spawn to exit and reads its peak RSS (`ru_maxrss`) from `os.wait4`. The commands "
        "take turns after one untimed warm-up each (files in the page cache); medians. Bytecode caches must be "
        "writable (PYTHONDONTWRITEBYTECODE unset), as in an installed package: without them each run "
        "recompiles edge_infer."
    )
    return section("2. CLI cold start", about, results, checks, "Where the time goes:\n", breakdown())


def main() -> None:
    args = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args()
    print(machine_header("edge-infer CLI cold start", args.quick) + "\n" + run(args.quick))


if __name__ == "__main__":
    main()

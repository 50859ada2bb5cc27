"""CLI cold start: wall time and peak RSS of one `edge-infer examples/mnist-7.png`, beside the floor
(`python -c "import onnxruntime, numpy, PIL"`) and `python -c "import torch"`.

    python benchmarks/cold_start.py [--quick]

Each is a fresh process; wall time is spawn to exit, peak RSS is ru_maxrss from os.wait4 (see
benchlib.run_child). The three commands take turns, after one untimed warm-up each so that the files are
in the page cache (a process cold start, not a disk cold start); medians.
"""

from __future__ import annotations

import argparse
import sys

import benchlib
from benchlib import console_script, median, mib, run_child, section, table, target, timed

RUNS = 7  # per command; --quick: 5 (the least that makes a median worth printing)
TARGET_SECONDS, TARGET_RSS = 0.16, 64 * 2**20


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
    checks = target(
        f"cold start <= {TARGET_SECONDS} s wall and <= {mib(TARGET_RSS)}",
        f"{seconds[cli]:.3f} s ({seconds[cli] - seconds[floor]:+.3f} s over the floor), {mib(rss[cli])}",
        seconds[cli] <= TARGET_SECONDS and rss[cli] <= TARGET_RSS,
    )
    about = (
        "Fresh processes, started from the project root with stdout to /dev/null by a tiny wrapper that "
        "times each from spawn to exit and reads its peak RSS (`ru_maxrss`) from `os.wait4`. The commands "
        "take turns after one untimed warm-up each (files in the page cache); medians."
    )
    return section("2. CLI cold start", about, results, checks)


def main() -> None:
    args = benchlib.add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args()
    print(benchlib.machine_header("edge-infer CLI cold start", args.quick) + "\n" + run(args.quick))


if __name__ == "__main__":
    main()

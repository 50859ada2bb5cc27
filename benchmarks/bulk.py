"""Bulk: `edge-infer DIR > /dev/null` over the 10,000 MNIST test images as PNG files, end to end, beside
decoding them alone and a naive loop.

    python benchmarks/bulk.py [--data-dir ../shared/data] [--out bench-out] [--quick]

The PNGs are written once to OUT/mnist-test-png/ (named INDEX-LABEL.png, e.g. 00042-7.png) and reused. One
untimed run captures the CLI's output to score its labels against the true ones (and warms the page cache);
then timed runs with stdout to /dev/null, taking turns with two reference processes: one that only decodes
the files (`Image.open(path).load()`, in as many forked processes as the CLI uses) and a naive loop (one
`Classifier().predict(path)` per file in one process); medians.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

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

RUNS = 3  # timed runs; the same with --quick (one run takes about a second or two)
TARGET_IMAGES_PER_S = 10_000
TARGET_VS_DECODE = 2.5  # the CLI at most this many times the decode-only time
TARGET_VS_NAIVE = 3.0  # ... and at least this many times faster than the naive loop
TARGET_DEFAULT_SLOWER = 1.10  # the CLI's default processes x threads within this of the best, quiet and busy
TARGET_RAY_SCALING = 1.6  # Ray Data: 2 DigitReader workers at least this many times faster than 1
SETTINGS_IMAGES = 3000  # the processes x threads table and the Ray rows use the first this many files
# processes x threads of the CLI (--jobs, --threads); None: the CLI's defaults
CLI_SETTINGS: dict[str, list[str]] = {
    "default (no options)": [],
    "--jobs 1": ["--jobs", "1"],
    "--jobs 1 --threads 2": ["--jobs", "1", "--threads", "2"],
    "--jobs 2 --threads 2": ["--jobs", "2", "--threads", "2"],
}
# Ray Data over the same files: a local cluster of 2 CPUs, DigitReader actors at half a CPU each (whole-CPU
# actors would hold both CPUs and starve the read tasks); one untimed pass first (actor start-up, imports).
RAY_RUN = """
import sys, time
import ray
from edge_infer.ray import DigitReader
directory, workers, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
ray.data.DataContext.get_current().enable_progress_bars = False
def once():
    ds = ray.data.read_binary_files(directory, include_paths=True)
    strategy = ray.data.ActorPoolStrategy(size=workers)
    return ds.map_batches(DigitReader, compute=strategy, num_cpus=0.5, batch_size=256).count()
once()
for _ in range(runs):
    start = time.perf_counter()
    once()
    print(time.perf_counter() - start)
ray.shutdown()
"""

# Decode-only reference: every PNG in DIR opened and fully decoded by JOBS forked processes, nothing else.
DECODE_ONLY = """
import multiprocessing, os, sys
from PIL import Image
def decode(paths):
    for path in paths:
        Image.open(path).load()
directory, jobs = sys.argv[1], int(sys.argv[2])
paths = sorted(os.path.join(directory, name) for name in os.listdir(directory) if name.endswith(".png"))
chunks = [paths[i::jobs] for i in range(jobs)]
with multiprocessing.get_context("fork").Pool(jobs) as pool:
    pool.map(decode, chunks)
"""
# Naive loop: what a user writes first; one process, one predict per file.
NAIVE_LOOP = """
import os, sys
from edge_infer import Classifier
classifier = Classifier()
directory = sys.argv[1]
for name in sorted(os.listdir(directory)):
    if name.endswith(".png"):
        classifier.predict(os.path.join(directory, name))
"""


def write_pngs(data_dir: Path, directory: Path) -> int:
    """The MNIST test set as PNG files in directory (skipped when a previous run finished writing them)."""
    done = directory / ".complete"
    if done.exists():
        return int(done.read_text())
    from PIL import Image

    from train.data import load_mnist

    _, test = load_mnist(data_dir, download=False)
    directory.mkdir(parents=True, exist_ok=True)
    images, labels = test.images.numpy(), test.labels.tolist()
    for index, (image, label) in enumerate(zip(images, labels, strict=False)):
        Image.fromarray(image).save(directory / f"{index:05d}-{label}.png")
    done.write_text(str(len(labels)))
    return len(labels)


def accuracy(output: bytes) -> tuple[float, int]:
    """(fraction of lines whose label matches the file name's, lines) from `path<TAB>label<TAB>confidence`."""
    right = lines = 0
    for line in output.decode().splitlines():
        path, label, _ = line.split("\t")[:3]
        right += label == Path(path).stem.split("-")[1]
        lines += 1
    return right / max(lines, 1), lines


def cli_settings(directory: Path, quick: bool) -> str:
    """The CLI's processes x threads over SETTINGS_IMAGES files, quiet and with one core busy."""
    from threads import busy_core

    files = sorted(str(p) for p in directory.glob("*.png"))[:SETTINGS_IMAGES]
    part = directory.parent / f"{directory.name}-first-{len(files)}"
    if not part.exists():  # (a directory of links: the command line stays short)
        part.mkdir()
        for f in files:
            (part / Path(f).name).symlink_to(f)
    command = [console_script("edge-infer")]
    seconds: dict[tuple[str, str], float] = {}
    runs = 2 if quick else RUNS
    for state in ("quiet", "one core busy"):
        with busy_core(state != "quiet"):
            calls = {name: (lambda a=args: run_child([*command, *a, str(part)])) for name, args in CLI_SETTINGS.items()}
            for name, samples in timed(calls, reps=runs, rounds=runs, warmup=0).items():
                seconds[(state, name)] = median(samples)
    rows, checks = [], ""
    for state in ("quiet", "one core busy"):
        best = min(seconds[(state, name)] for name in CLI_SETTINGS)
        for name in CLI_SETTINGS:
            t = seconds[(state, name)]
            rows.append(
                [
                    state,
                    f"`edge-infer {name + ' ' if name[0] == '-' else ''}DIR`",
                    f"{t:.2f}",
                    f"{len(files) / t:,.0f}",
                    f"{t / best:.2f}x",
                ]
            )
        t = seconds[(state, "default (no options)")]
        checks += target(
            f"the CLI's defaults within {TARGET_DEFAULT_SLOWER - 1:.0%} of the best --jobs x --threads ({state})",
            f"{t / best:.2f}x the best",
            t / best <= TARGET_DEFAULT_SLOWER,
        )
    about = (
        f"`edge-infer [options] DIR > /dev/null` over the first {len(files):,} of those PNGs, {runs} runs of each "
        f"setting taking turns, medians; fresh processes, start-up included. The defaults here: one process per "
        f"core reading (--jobs {usable_cpus_here()}), the model on 1 thread in the parent. One core busy: another "
        f"process spinning (`python -c 'while True: pass'`) throughout that state."
    )
    table_ = table(["state", "command", "wall s (median)", "images/s", "vs best"], rows)
    return section("3a. Bulk: processes x threads, quiet and busy", about, table_, checks)


def usable_cpus_here() -> int:
    from edge_infer.classifier import usable_cpus

    return usable_cpus()


def ray_scaling(directory: Path, quick: bool) -> str:
    """Ray Data with 1 and 2 DigitReader workers over the same files (skipped without ray installed)."""
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return section("3c. Bulk on Ray Data", 'Not run: ray is not installed (`pip install -e ".[ray]"`).')
    part = directory.parent / f"{directory.name}-first-{SETTINGS_IMAGES}"
    count = len(list(part.glob("*.png")))
    runs = 2 if quick else RUNS
    seconds = {}
    for workers in (1, 2):
        out = subprocess.run(
            [sys.executable, "-c", RAY_RUN, str(part), str(workers), str(runs)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        seconds[workers] = median([float(x) for x in out])
    rows = [[w, f"{seconds[w]:.2f}", f"{count / seconds[w]:,.0f}", f"{seconds[1] / seconds[w]:.2f}x"] for w in (1, 2)]
    about = (
        f"`ray.data.read_binary_files(DIR).map_batches(edge_infer.ray.DigitReader, "
        f"compute=ActorPoolStrategy(size=W), num_cpus=0.5, batch_size=256)` over {count:,} MNIST PNGs on a local "
        f"cluster started with `ray.init(num_cpus=2)`; one untimed pass (actor start-up), then {runs} timed passes "
        f"each; medians (scripts in bulk.py)."
    )
    check = target(
        f"Ray Data 2 workers >= {TARGET_RAY_SCALING:g}x 1 worker",
        f"{seconds[1] / seconds[2]:.2f}x",
        seconds[1] / seconds[2] >= TARGET_RAY_SCALING,
    )
    return section(
        "3c. Bulk on Ray Data: 1 vs 2 workers",
        about,
        table(["workers", "wall s (median)", "images/s", "speed-up"], rows),
        check,
    )


def run(data_dir: Path, out: Path, quick: bool = False) -> str:
    directory = out / "mnist-test-png"
    count = write_pngs(data_dir, directory)
    command = [console_script("edge-infer"), str(directory)]

    first = run_child(command, capture=True)  # untimed: its output is scored, and the files get cached
    acc, lines = accuracy(first.stdout or b"")
    from edge_infer.classifier import usable_cpus

    jobs = usable_cpus()  # what the CLI's --jobs defaults to
    peaks: list[int] = []
    calls = {
        "bulk": lambda: peaks.append(run_child(command).peak_rss),
        "decode": lambda: run_child([sys.executable, "-c", DECODE_ONLY, str(directory), str(jobs)]),
        "naive": lambda: run_child([sys.executable, "-c", NAIVE_LOOP, str(directory)]),
    }
    samples = timed(calls, reps=RUNS, rounds=RUNS, warmup=0)
    seconds = median(samples["bulk"])
    decode, naive = median(samples["decode"]), median(samples["naive"])

    rows = [
        [
            f"{count:,}",
            f"{seconds:.2f}",
            f"{min(samples['bulk']):.2f}",
            f"{count / seconds:,.0f}",
            mib(median(peaks)),
            f"{acc:.2%} ({lines:,} lines)",
        ]
    ]
    results = table(["images", "wall s (median)", "wall s (best)", "images/s", "peak RSS", "CLI accuracy"], rows)
    results += "\n" + table(
        ["process (same files, taking turns with the CLI)", "wall s (median)", "images/s", "CLI time / this"],
        [
            ["`edge-infer DIR` (above)", f"{seconds:.2f}", f"{count / seconds:,.0f}", "1.00x"],
            [
                f"decode only: `Image.open(path).load()` per file, {jobs} forked processes",
                f"{decode:.2f}",
                f"{count / decode:,.0f}",
                f"{seconds / decode:.2f}x",
            ],
            [
                "naive loop: `Classifier().predict(path)` per file, one process",
                f"{naive:.2f}",
                f"{count / naive:,.0f}",
                f"{seconds / naive:.2f}x",
            ],
        ],
    )
    about = (
        f"`edge-infer {directory}` (its defaults: bundled fp32 model, one decoding process per core), "
        f"stdout to /dev/null, {RUNS} timed runs after one untimed run whose output was scored against the "
        f"labels in the file names; median. Peak RSS: `os.wait4`'s ru_maxrss, the largest of the CLI and its "
        f"decoding processes. The decode-only and naive-loop processes (scripts in bulk.py) take turns with "
        f"the CLI runs; all three are fresh processes, start-up included."
    )
    check = target(
        f"bulk >= {TARGET_IMAGES_PER_S:,} images/s",
        f"{count / seconds:,.0f} images/s",
        count / seconds >= TARGET_IMAGES_PER_S,
    )
    check += target(
        f"bulk <= {TARGET_VS_DECODE:g}x the decode-only time",
        f"{seconds / decode:.2f}x ({seconds:.2f} s vs {decode:.2f} s)",
        seconds / decode <= TARGET_VS_DECODE,
    )
    check += target(
        f"bulk >= {TARGET_VS_NAIVE:g}x the naive loop",
        f"{naive / seconds:.2f}x ({naive:.2f} s vs {seconds:.2f} s)",
        naive / seconds >= TARGET_VS_NAIVE,
    )
    return (
        section("3. Bulk: a directory of 10,000 PNGs", about, results, check)
        + "\n"
        + cli_settings(directory, quick)
        + "\n"
        + ray_scaling(directory, quick)
    )


def main() -> None:
    args = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args()
    print(machine_header("edge-infer bulk", args.quick) + "\n" + run(args.data_dir, args.out, args.quick))


if __name__ == "__main__":
    main()

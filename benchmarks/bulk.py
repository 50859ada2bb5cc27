"""Bulk: `edge-infer DIR > /dev/null` over the 10,000 MNIST test images as PNG files, end to end.

    python benchmarks/bulk.py [--data-dir ../shared/data] [--out bench-out] [--quick]

The PNGs are written once to OUT/mnist-test-png/ (named INDEX-LABEL.png, e.g. 00042-7.png) and reused. One
untimed run captures the CLI's output to score its labels against the true ones (and warms the page cache);
then timed runs with stdout to /dev/null; median.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import benchlib
from benchlib import console_script, median, mib, run_child, section, table, target, timed

RUNS = 3  # timed runs; the same with --quick (one run takes about a second or two)
TARGET_IMAGES_PER_S = 8000


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
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
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


def run(data_dir: Path, out: Path) -> str:
    directory = out / "mnist-test-png"
    count = write_pngs(data_dir, directory)
    command = [console_script("edge-infer"), str(directory)]

    first = run_child(command, capture=True)  # untimed: its output is scored, and the files get cached
    acc, lines = accuracy(first.stdout or b"")
    peaks: list[int] = []
    samples = timed({"bulk": lambda: peaks.append(run_child(command).peak_rss)}, reps=RUNS, rounds=RUNS, warmup=0)
    seconds = median(samples["bulk"])

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
    about = (
        f"`edge-infer {directory}` (its defaults: bundled fp32 model, one decoding process per core), "
        f"stdout to /dev/null, {RUNS} timed runs after one untimed run whose output was scored against the "
        f"labels in the file names; median. Peak RSS: `os.wait4`'s ru_maxrss, the largest of the CLI and its "
        f"decoding processes."
    )
    check = target(
        f"bulk >= {TARGET_IMAGES_PER_S:,} images/s",
        f"{count / seconds:,.0f} images/s",
        count / seconds >= TARGET_IMAGES_PER_S,
    )
    return section("3. Bulk: a directory of 10,000 PNGs", about, results, check)


def main() -> None:
    args = benchlib.add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args()
    print(benchlib.machine_header("edge-infer bulk", args.quick) + "\n" + run(args.data_dir, args.out))


if __name__ == "__main__":
    main()

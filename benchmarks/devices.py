"""Models for devices: static int8 (QDQ) vs dynamic int8, and the ORT format vs .onnx.

    python benchmarks/devices.py [--checkpoint runs/bundled/checkpoint.pt] [--data-dir ../shared/data] [--quick]

1. export the checkpoint (as benchmarks/inference.py picks it) with export.export to OUT/devices/: fp32, dynamic
   int8, static int8 (calibrated on MNIST training images) and each one's .ort (edge-export --ort);
2. time session.run at batch 1, 64 and 1024 on real MNIST test images: torch eager, fp32, dynamic int8 and
   static int8, sessions made by edge_infer.Classifier at 1 and 2 threads, all taking turns in one run;
3. .onnx vs .ort: in-process Classifier creation (session creation + checks), and the cold CLI
   `edge-infer --model X examples/mnist-7.png` (fresh processes taking turns: wall time and peak RSS).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from benchlib import (
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
from inference import THREADS, resolve_checkpoint, time_engines

from edge_infer import Classifier
from export.export import export, load_trained
from train.data import load_mnist

BATCHES = (1, 64, 1024)
ENGINES = ("torch", "fp32", "int8 dynamic", "int8 static")
CREATE_REPS = 40  # Classifier creations per model; --quick: a tenth
COLD_RUNS = 7  # fresh CLI processes per model; --quick: 5


def export_all(checkpoint: Path, out: Path, data_dir: Path):
    train, test = load_mnist(data_dir, download=False)
    folder = out / "devices"
    paths = {
        "fp32": folder / "digit-rnn.onnx",
        "int8 dynamic": folder / "digit-rnn-int8.onnx",
        "int8 static": folder / "digit-rnn-int8-static.onnx",
    }
    report = export(
        checkpoint,
        paths["fp32"],
        test,
        int8_out=paths["int8 dynamic"],
        int8_static_out=paths["int8 static"],
        train=train,
        ort=True,
    )
    return paths, report, test


def speed(checkpoint: Path, paths: dict[str, Path], test, quick: bool) -> tuple[str, str]:
    _, trained, _ = load_trained(checkpoint)
    sessions = {(engine, t): Classifier(paths[engine], threads=t).session for engine in ENGINES[1:] for t in THREADS}
    rows, checks, best = [], [], {}
    for batch in BATCHES:
        samples = time_engines(trained, test.floats(slice(0, batch)), sessions, quick)
        seconds = {key: median(s) for key, s in samples.items()}
        for engine in ENGINES:
            t = min(THREADS, key=lambda t: seconds[(engine, t)])
            best[(batch, engine)] = (seconds[(engine, t)], t)
        cells = [f"{best[(batch, e)][0] * 1e6:,.1f} ({best[(batch, e)][1]})" for e in ENGINES]
        ratio = best[(batch, "int8 dynamic")][0] / best[(batch, "int8 static")][0]
        rows.append(
            [batch, *cells, f"{ratio:.2f}x", f"{best[(batch, 'torch')][0] / best[(batch, 'int8 static')][0]:.2f}x"]
        )
    results = table(["batch", *(f"{e} µs (threads)" for e in ENGINES), "static vs dynamic", "static vs torch"], rows)
    top = BATCHES[-1]
    ratio = best[(top, "int8 dynamic")][0] / best[(top, "int8 static")][0]
    vs_torch = best[(top, "torch")][0] / best[(top, "int8 static")][0]
    checks.append(
        target(
            f"static int8 at batch {top} at least as fast as dynamic int8",
            f"{ratio:.2f}x the dynamic model's speed",
            ratio >= 1.0,
        )
    )
    checks.append(
        target(f"static int8 at batch {top} >= 2.5x torch eager (the aim)", f"{vs_torch:.2f}x", vs_torch >= 2.5)
    )
    return results, "".join(checks)


def ort_vs_onnx(paths: dict[str, Path], quick: bool) -> tuple[str, str]:
    models = {(kind, suffix): path.with_suffix(suffix) for kind, path in paths.items() for suffix in (".onnx", ".ort")}
    calls = {key: (lambda path=path: Classifier(path)) for key, path in models.items()}
    created = timed(calls, reps=CREATE_REPS // (10 if quick else 1), rounds=5, warmup=2)

    cli = console_script("edge-infer")
    cold_keys = [("fp32", ".onnx"), ("fp32", ".ort"), ("int8 static", ".onnx"), ("int8 static", ".ort")]
    peaks: dict = {key: [] for key in cold_keys}

    def launch(key) -> None:
        peaks[key].append(run_child([cli, "--model", str(models[key]), "examples/mnist-7.png"]).peak_rss)

    runs = 5 if quick else COLD_RUNS
    cold = timed({key: (lambda key=key: launch(key)) for key in cold_keys}, reps=runs, rounds=runs, warmup=1)
    rows = []
    for key, path in models.items():
        wall = f"{median(cold[key]):.3f}" if key in cold else "–"
        rss = mib(median(peaks[key][1:])) if key in cold else "–"
        rows.append([key[0], key[1], f"{path.stat().st_size:,}", f"{median(created[key]) * 1e3:.2f}", wall, rss])
    results = table(
        ["model", "format", "bytes", "Classifier(path) ms (median)", "cold CLI s (median)", "cold CLI peak RSS"], rows
    )
    checks = "".join(
        target(
            f"cold `edge-infer --model X.ort` no slower than with the .onnx ({kind})",
            f"{median(cold[(kind, '.ort')]):.3f} s vs {median(cold[(kind, '.onnx')]):.3f} s",
            median(cold[(kind, ".ort")]) <= median(cold[(kind, ".onnx")]),
        )
        for kind in ("fp32", "int8 static")
    )
    return results, checks


def run(checkpoint: Path | None, out: Path, data_dir: Path, quick: bool) -> str:
    path, origin = resolve_checkpoint(checkpoint, out, data_dir)
    paths, report, test = export_all(path, out, data_dir)
    accuracy = (
        f"Checkpoint `{path}` ({origin}), exported by this run to `{paths['fp32'].parent}`. MNIST test "
        f"accuracy: fp32 {report.fp32_accuracy:.2%}, dynamic int8 {report.int8_accuracy:.2%}, static int8 "
        f"{report.int8_static_accuracy:.2%} (calibrated on 2,000 training images)."
    )
    speed_table, speed_checks = speed(path, paths, test, quick)
    ort_table, ort_checks = ort_vs_onnx(paths, quick)
    about_speed = (
        "session.run per call on the first B MNIST test images, sessions made by "
        "`edge_infer.Classifier(threads=1|2)`, torch eager as in section 1; every engine and thread "
        "setting takes turns in one run (10 rounds, medians); each cell is the faster thread setting."
    )
    about_ort = (
        "`Classifier(path)` timed in-process (reads the file, creates the session, checks interface and "
        "metadata; 5 rounds taking turns, medians). Cold CLI: fresh `edge-infer --model X "
        "examples/mnist-7.png` processes taking turns after one warm-up each (files in the page cache); "
        "wall time and peak RSS (ru_maxrss via os.wait4), medians."
    )
    return section(
        "6. Devices: static int8 and the ORT format",
        accuracy,
        about_speed,
        speed_table,
        speed_checks,
        about_ort,
        ort_table,
        ort_checks,
    )


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="an edge-train checkpoint (default: runs/bundled/checkpoint.pt, else OUT/train-default)",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    header = machine_header("edge-infer devices benchmark", args.quick)
    body = run(args.checkpoint, args.out, args.data_dir, args.quick)
    command = shlex.join(["python", "benchmarks/devices.py", *sys.argv[1:]])
    print(header + f"\nCommand: `{command}`; took {time.perf_counter() - started:.0f} s.\n\n" + body)


if __name__ == "__main__":
    main()

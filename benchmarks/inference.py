"""Inference benchmark: torch eager vs onnxruntime fp32 and int8, on the same trained weights.

    python benchmarks/inference.py [--checkpoint runs/bundled/checkpoint.pt] [--data-dir ../shared/data] [--quick]

1. take a checkpoint: --checkpoint, else runs/bundled/checkpoint.pt (the run `python -m export.bundle` made
   the bundled models from), else OUT/train-default (the same command export.bundle runs, trained if missing);
2. export it to OUT/models/ (fp32 + int8) with export.export, which checks parity with torch first;
3. time one call, per batch of real MNIST test images, of: torch eager (DigitRNN batch_first as trained,
   torch.inference_mode) and session.run of onnxruntime sessions made by edge_infer's own
   Classifier (so with the runtime's options); each at 1 thread and at 2 (threads=None picks 1 below
   batch 256 and all cores from there on).
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import training
from benchlib import ROOT, add_common_args, machine_header, median, section, table, target, timed

from edge_infer import Classifier
from edge_infer.classifier import bundled_model_path
from edge_infer.model_info import INPUT_NAME, OUTPUT_NAME, to_rows
from export.export import export, load_trained
from export.graph import FORMS, build_graph
from train.data import Split, load_mnist

BATCHES = (1, 64, 1024)
REPS = {1: 5000, 64: 1000, 1024: 100}  # timed calls per configuration and batch; --quick: a tenth
BUDGET = 5.0  # ... or fewer, once a configuration has used this many seconds (at least 10 calls)
THREADS = (1, 2)  # torch threads and onnxruntime intra-op threads tried
BUNDLED_RUN = ROOT / "runs" / "bundled" / "checkpoint.pt"


@dataclass
class Exported:
    checkpoint: Path
    origin: str  # where the checkpoint came from, in words
    fp32: Path
    int8: Path
    fp32_accuracy: float
    int8_accuracy: float


def resolve_checkpoint(checkpoint: Path | None, out: Path, data_dir: Path) -> tuple[Path, str]:
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise SystemExit(f"error: no checkpoint at {checkpoint}")
        return checkpoint, "given with --checkpoint"
    if BUNDLED_RUN.is_file():
        return BUNDLED_RUN, "runs/bundled: the run `python -m export.bundle` exported the bundled models from"
    run = training.ensure_run("default", out, data_dir)
    return run.checkpoint, (
        f"no {BUNDLED_RUN.relative_to(ROOT)} here, so the default recipe with seed 0 (what "
        f"export.bundle trains) from `{' '.join(run.command)}`, {run.source}"
    )


def export_models(checkpoint: Path, origin: str, out: Path, test: Split) -> Exported:
    models = out / "models"
    fp32, int8 = models / bundled_model_path(False).name, models / bundled_model_path(True).name
    result = export(checkpoint, fp32, test, int8_out=int8)
    return Exported(checkpoint, origin, fp32, int8, result.fp32_accuracy, result.int8_accuracy or 0.0)


def _same_as_bundled(path: Path, int8: bool) -> str:
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    return (
        "identical to the bundled model"
        if digest(path) == digest(bundled_model_path(int8))
        else "not byte-identical to the bundled model"
    )


def time_engines(trained, images: torch.Tensor, sessions: dict, quick: bool) -> dict:
    """Samples of torch eager (`("torch", threads)` for each of THREADS) and of every session in `sessions`
    (any keys) on one batch of images [B, 28, 28], all taking turns in one run."""
    feed = {INPUT_NAME: to_rows(images.numpy())}  # [28, B, 28], time-major
    calls, before = {}, {}
    for threads in THREADS:
        calls[("torch", threads)] = lambda: trained(images)
        before[("torch", threads)] = lambda threads=threads: torch.set_num_threads(threads)
    for key, session in sessions.items():
        calls[key] = lambda session=session: session.run([OUTPUT_NAME], feed)
    batch = len(images)
    with torch.inference_mode():
        return timed(calls, reps=REPS[batch] // (10 if quick else 1), before=before,
                     budget=BUDGET / (10 if quick else 1))


def measure(models: Exported, test: Split, quick: bool) -> tuple[str, list[str]]:
    """The results table and the target lines."""
    _, trained, _ = load_trained(models.checkpoint)  # DigitRNN(batch_first=True), as trained, in eval mode
    sessions = {
        (precision, threads): Classifier(path, threads=threads).session
        for precision, path in (("fp32", models.fp32), ("int8", models.int8))
        for threads in THREADS
    }

    rows, best, agreement = [], {}, {}
    for batch in BATCHES:
        images = test.floats(slice(0, batch))  # real MNIST test images, [B, 28, 28] in [0, 1]
        rows_input = to_rows(images.numpy())  # [28, B, 28], time-major

        samples = time_engines(trained, images, sessions, quick)
        with torch.inference_mode():
            reference = trained(images).numpy()
        seconds = {key: median(s) for key, s in samples.items()}
        if batch == BATCHES[-1]:
            agreement = {
                p: float(
                    (
                        sessions[(p, 1)].run([OUTPUT_NAME], {INPUT_NAME: rows_input})[0].argmax(1)
                        == reference.argmax(1)
                    ).mean()
                )
                for p in ("fp32", "int8")
            }

        for engine in ("torch", "fp32", "int8"):  # the faster thread setting of each
            threads = min(THREADS, key=lambda t: seconds[(engine, t)])
            best[(batch, engine)] = (seconds[(engine, threads)], threads)
        t_torch = best[(batch, "torch")][0]
        for (engine, threads), t in seconds.items():
            micros = f"{t * 1e6:,.1f}"
            rows.append(
                [
                    batch,
                    "torch eager" if engine == "torch" else f"onnxruntime {engine}",
                    threads,
                    f"**{micros}**" if best[(batch, engine)][1] == threads else micros,
                    f"{batch / t:,.0f}",
                    f"{t_torch / t:.2f}x",
                    len(samples[(engine, threads)]),
                ]
            )

    results = table(["batch", "engine", "threads", "µs per call (median)", "images/s", "vs torch", "calls timed"], rows)
    checks = []
    for batch, precision, need_us, need_x in (
        (1, "fp32", 30, 6),
        (1, "int8", 30, 6),
        (1024, "fp32", None, 1.2),
        (1024, "int8", None, 2.0),
    ):
        (t, threads), (t_torch, torch_threads) = best[(batch, precision)], best[(batch, "torch")]
        what = (
            f"batch 1, {precision}: <= {need_us} µs per session.run and >= {need_x}x torch"
            if need_us
            else f"batch {batch}, {precision}: >= {need_x}x torch throughput"
        )
        measured = (f"{t * 1e6:.1f} µs, " if need_us else "") + (
            f"{t_torch / t:.2f}x torch ({batch / t:,.0f} vs {batch / t_torch:,.0f} images/s; threads: "
            f"onnxruntime {threads}, torch {torch_threads})"
        )
        checks.append(target(what, measured, (need_us is None or t * 1e6 <= need_us) and t_torch / t >= need_x))
    checks.append(
        f"- argmax agreement with torch on the {BATCHES[-1]} images: fp32 {agreement['fp32']:.2%}, "
        f"int8 {agreement['int8']:.2%}\n"
    )
    return results, checks


def compare_forms(models: Exported, test: Split, quick: bool) -> str:
    """fp32 graph forms side by side (export.graph.FORMS), same weights and metadata, 1 and 2 threads."""
    import onnx

    exported = onnx.load(models.fp32)
    _, _, time_major = load_trained(models.checkpoint)
    weights = {k: v.numpy() for k, v in time_major.state_dict().items()}
    config = time_major.config
    sessions = {}
    for form in FORMS:
        model = build_graph(weights, config.cell, config.hidden, config.layers, form=form)
        model.metadata_props.extend(exported.metadata_props)  # so that Classifier takes it
        for threads in THREADS:
            sessions[(form, threads)] = Classifier(model.SerializeToString(), threads=threads).session
    rows = []
    for batch in BATCHES:
        feed = {INPUT_NAME: to_rows(test.floats(slice(0, batch)).numpy())}
        calls = {key: lambda s=s, feed=feed: s.run([OUTPUT_NAME], feed) for key, s in sessions.items()}
        samples = timed(calls, reps=REPS[batch] // (10 if quick else 1), budget=BUDGET / (10 if quick else 1))
        for form in FORMS:
            rows.append([batch, form] + [f"{median(samples[(form, t)]) * 1e6:,.1f}" for t in THREADS])
    return table(["batch", "fp32 graph form", *(f"µs, {t} thread{'s' if t > 1 else ''}" for t in THREADS)], rows)


def run(checkpoint: Path | None, out: Path, data_dir: Path, quick: bool) -> tuple[str, Exported]:
    _, test = load_mnist(data_dir, download=False)
    path, origin = resolve_checkpoint(checkpoint, out, data_dir)
    models = export_models(path, origin, out, test)
    results, checks = measure(models, test, quick)
    forms = compare_forms(models, test, quick)
    about = (
        f"Checkpoint `{models.checkpoint}` ({models.origin}), exported by this run with export.export "
        f"(parity with torch checked) to `{models.fp32}` ({_same_as_bundled(models.fp32, False)}; MNIST "
        f"test accuracy {models.fp32_accuracy:.2%}) and `{models.int8}` "
        f"({_same_as_bundled(models.int8, True)}; {models.int8_accuracy:.2%}).\n\n"
        "Each row times single calls on the first B MNIST test images: torch eager `model(images)` "
        "(batch_first [B, 28, 28] as trained, torch.inference_mode) vs `session.run` on time-major "
        "[28, B, 28] input, sessions made by `edge_infer.Classifier(threads=...)` (so the runtime's options: "
        "inter-op 1; worker threads spin only in multi-thread sessions). Both at 1 and 2 threads "
        "(torch.set_num_threads; onnxruntime intra-op threads: the runtime's default, threads=None, uses 1 "
        "below batch 256 and all cores from there on); on a busy 2-core machine, 2 torch threads "
        "can be far slower than 1, so 'vs torch' compares with torch's faster setting at that batch. "
        "All rows take turns in 10 rounds; medians. Bold: the faster thread setting of each engine, "
        "which the targets use."
    )
    forms_about = (
        "\n\nThe fp32 graph forms `edge-export --form` can write (export/graph.py), from the same weights, "
        "timed the same way (session.run, medians; the default is `per-step`):\n\n"
    )
    return section(
        "1. Inference: torch eager vs onnxruntime", about, results, "".join(checks) + forms_about + forms
    ), models


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="an edge-train checkpoint (default: runs/bundled/checkpoint.pt, else OUT/train-default)",
    )
    args = parser.parse_args()
    body, _ = run(args.checkpoint, args.out, args.data_dir, args.quick)
    print(machine_header("edge-infer inference benchmark", args.quick) + "\n" + body)


if __name__ == "__main__":
    main()

"""Inference benchmark: torch eager vs onnxruntime fp32 and int8, on the same trained weights.

    python benchmarks/inference.py [--checkpoint runs/bundled/checkpoint.pt] [--data-dir ../shared/data] [--quick]

1. take a checkpoint: --checkpoint, else runs/bundled/checkpoint.pt (the run `python -m export.bundle` made
   the bundled models from), else OUT/train-default (the same command export.bundle runs, trained if missing);
2. export it to OUT/models/ (fp32 + int8) with export.export, which checks parity with torch first;
3. time one call, per batch of real MNIST test images, of: torch eager (DigitRNN batch_first as trained,
   torch.inference_mode) and session.run of onnxruntime sessions made by edge_infer's own
   Classifier (so with the runtime's options); each at 1 thread and at 2 (threads=None picks 1 below
   batch 256, and all cores from there on where there are at least 4: see threads.py); OpenVINO on the same
   fp32 .onnx file when it is installed (`pip install -e ".[bench]"`); and, at batch 1, onnxruntime's own
   floor: a bare Identity graph and a bare
   chain of 27 Gemm+Relu nodes of the model's hidden size (the recurrence's dependent steps, nothing else);
4. the fp32 graph forms export/graph.py writes, for every cell (the checkpoint's weights for its own cell,
   an untrained model of the same size for the others: speed does not depend on the values).
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import training
from benchlib import ROOT, add_common_args, machine_header, median, section, table, target, timed

from edge_infer import Classifier
from edge_infer.classifier import PARALLEL_BATCH, PARALLEL_MIN_CPUS, bundled_model_path, usable_cpus
from edge_infer.model_info import INPUT_NAME, OUTPUT_NAME, PIXELS, to_rows
from export.export import export, load_trained
from export.graph import AUTO_FORMS, FORMS, SWITCH_BATCH, build_model
from train.data import Split, load_mnist
from train.model import CELLS, DigitRNN, ModelConfig

BATCHES = (1, 64, 1024)
REPS = {1: 5000, 64: 1000, 1024: 100}  # timed calls per configuration and batch; --quick: a tenth
BUDGET = 5.0  # ... or fewer, once a configuration has used this many seconds (at least 10 calls)
THREADS = (1, 2)  # torch threads and onnxruntime intra-op threads tried
CHAIN = 27  # the recurrence's dependent steps after the first: the batch-1 floor is a chain of this many Gemm+Relu
TARGET_B1_VS_CHAIN = 1.3  # batch 1 fp32 within this factor of the bare chain
TARGET_1024 = {"fp32": 1.5, "int8": 2.5}  # batch 1024 throughput, times torch's
ENGINES = {
    "torch": "torch eager",
    "fp32": "onnxruntime fp32",
    "int8": "onnxruntime int8",
    "openvino": "OpenVINO, same fp32 .onnx",
}
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


def _bare_session(model, threads: int = 1) -> ort.InferenceSession:
    """A session with the options edge_infer.Classifier gives its small-batch session."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def floor_calls(hidden: int) -> dict:
    """onnxruntime's batch-1 floor: session.run of a bare Identity graph, and of CHAIN chained Gemm+Relu
    [1, hidden] x [hidden, hidden] (fused by onnxruntime, like the per-step recurrence)."""
    from onnx import TensorProto, helper, numpy_helper

    def model(nodes, width, output, initializers=()):
        graph = helper.make_graph(
            nodes,
            "floor",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", width])],
            list(initializers),
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    weight = numpy_helper.from_array(np.eye(hidden, dtype=np.float32) * 0.9, "W")
    nodes, x = [], "x"
    for i in range(CHAIN):
        nodes += [
            helper.make_node("Gemm", [x, "W"], [f"g{i}"], transB=1),
            helper.make_node("Relu", [f"g{i}"], [f"r{i}"]),
        ]
        x = f"r{i}"
    identity = _bare_session(model([helper.make_node("Identity", ["x"], ["y"])], PIXELS, "y"))
    chain = _bare_session(model(nodes, hidden, x, [weight]))
    row, state = np.random.default_rng(0).random((1, PIXELS), np.float32), np.ones((1, hidden), np.float32)
    return {
        ("floor", "identity"): lambda: identity.run(None, {"x": row}),
        ("floor", "chain"): lambda: chain.run(None, {"x": state}),
    }


def openvino_requests(path: Path) -> dict[int, object]:
    """threads -> an OpenVINO infer request for the .onnx file (CPU, default settings but the thread
    count); {} when OpenVINO is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return {}
    core = ov.Core()
    return {
        t: core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": t}).create_infer_request() for t in THREADS
    }


def time_engines(trained, images: torch.Tensor, sessions: dict, quick: bool) -> dict:
    """Samples of torch eager (`("torch", threads)` for each of THREADS) and of every session in `sessions`
    (any keys) on one batch of images [B, 28, 28], all taking turns in one run (benchmarks/devices.py)."""
    feed = {INPUT_NAME: to_rows(images.numpy())}  # [28, B, 28], time-major
    calls, before = {}, {}
    for threads in THREADS:
        calls[("torch", threads)] = lambda: trained(images)
        before[("torch", threads)] = lambda threads=threads: torch.set_num_threads(threads)
    for key, session in sessions.items():
        calls[key] = lambda session=session: session.run([OUTPUT_NAME], feed)
    with torch.inference_mode():
        return timed(
            calls, reps=REPS[len(images)] // (10 if quick else 1), before=before, budget=BUDGET / (10 if quick else 1)
        )


def measure(models: Exported, test: Split, quick: bool) -> tuple[str, list[str]]:
    """The results table and the target lines."""
    _, trained, _ = load_trained(models.checkpoint)  # DigitRNN(batch_first=True), as trained, in eval mode
    classifiers = {
        (precision, threads): Classifier(path, threads=threads)
        for precision, path in (("fp32", models.fp32), ("int8", models.int8))
        for threads in THREADS
    }
    sessions = {key: classifier.session for key, classifier in classifiers.items()}
    openvino = openvino_requests(models.fp32)
    floor, floors = floor_calls(trained.config.hidden), {}

    rows, best, agreement = [], {}, {}
    for batch in BATCHES:
        images = test.floats(slice(0, batch))  # real MNIST test images, [B, 28, 28] in [0, 1]
        rows_input = to_rows(images.numpy())  # [28, B, 28], time-major

        calls, before = {}, {}
        for threads in THREADS:
            calls[("torch", threads)] = lambda images=images: trained(images)
            before[("torch", threads)] = lambda threads=threads: torch.set_num_threads(threads)
        for key, session in sessions.items():
            calls[key] = lambda session=session, feed={INPUT_NAME: rows_input}: session.run([OUTPUT_NAME], feed)
        for threads, request in openvino.items():
            calls[("openvino", threads)] = lambda request=request, x=rows_input: request.infer({0: x})
        if batch == 1:
            calls.update(floor)
            # the library's own batch-1 call (Classifier.classify runs it): the same session through an IO binding
            calls[("floor", "library")] = lambda x=rows_input, c=classifiers[("fp32", 1)]: c._run(x, c.session)
        with torch.inference_mode():
            samples = timed(
                calls, reps=REPS[batch] // (10 if quick else 1), before=before, budget=BUDGET / (10 if quick else 1)
            )
            reference = trained(images).numpy()
        seconds = {key: median(s) for key, s in samples.items()}
        floors.update({key[1]: seconds.pop(key) for key in list(seconds) if key[0] == "floor"})
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
            if openvino:
                logits = next(iter(openvino[1].infer({0: rows_input}).values()))
                agreement["openvino"] = float((logits.argmax(1) == reference.argmax(1)).mean())

        engines = ("torch", "fp32", "int8") + (("openvino",) if openvino else ())
        for engine in engines:  # the faster thread setting of each
            threads = min(THREADS, key=lambda t: seconds[(engine, t)])
            best[(batch, engine)] = (seconds[(engine, threads)], threads)
        t_torch = best[(batch, "torch")][0]
        for (engine, threads), t in seconds.items():
            micros = f"{t * 1e6:,.1f}"
            rows.append(
                [
                    batch,
                    ENGINES[engine],
                    threads,
                    f"**{micros}**" if best[(batch, engine)][1] == threads else micros,
                    f"{batch / t:,.0f}",
                    f"{t_torch / t:.2f}x",
                    len(samples[(engine, threads)]),
                ]
            )

    results = table(["batch", "engine", "threads", "µs per call (median)", "images/s", "vs torch", "calls timed"], rows)
    t1, chain, identity, library = best[(1, "fp32")][0], floors["chain"], floors["identity"], floors["library"]
    results += "\n" + table(
        ["batch 1, 1 thread, same rounds as above", "µs per call (median)", "our fp32 / this"],
        [
            [
                "our fp32 as `Classifier` runs it (the session above through an IO binding)",
                f"{library * 1e6:.1f}",
                f"{t1 / library:.2f}x",
            ],
            ["bare Identity graph (onnxruntime's per-call floor)", f"{identity * 1e6:.1f}", f"{t1 / identity:.2f}x"],
            [
                f"bare chain of {CHAIN} Gemm+Relu, [1, {trained.config.hidden}] (the recurrence's floor)",
                f"{chain * 1e6:.1f}",
                f"{t1 / chain:.2f}x",
            ],
        ],
    )
    checks = [
        target(
            f"batch 1, fp32: within {TARGET_B1_VS_CHAIN}x of the bare {CHAIN}-Gemm+Relu chain",
            f"`Classifier`'s call {library * 1e6:.1f} µs vs {chain * 1e6:.1f} µs: {library / chain:.2f}x "
            f"(plain session.run: {t1 / chain:.2f}x; torch: {best[(1, 'torch')][0] * 1e6:.1f} µs, "
            f"{best[(1, 'torch')][0] / library:.2f}x ours)",
            library / chain <= TARGET_B1_VS_CHAIN,
        )
    ]
    for precision, need_x in TARGET_1024.items():
        batch = BATCHES[-1]
        (t, threads), (t_torch, torch_threads) = best[(batch, precision)], best[(batch, "torch")]
        measured = (
            f"{t_torch / t:.2f}x torch ({batch / t:,.0f} vs {batch / t_torch:,.0f} images/s; threads: "
            f"onnxruntime {threads}, torch {torch_threads})"
        )
        checks.append(
            target(f"batch {batch}, {precision}: >= {need_x}x torch throughput", measured, t_torch / t >= need_x)
        )
    checks.append(
        f"- argmax agreement with torch on the {BATCHES[-1]} images: "
        + ", ".join(f"{ENGINES[k]} {v:.2%}" for k, v in agreement.items())
        + "\n"
    )
    if openvino:
        ratios = ", ".join(f"batch {b}: {best[(b, 'fp32')][0] / best[(b, 'openvino')][0]:.2f}x" for b in BATCHES)
        checks.append(
            f"- OpenVINO (peer row, no target) vs onnxruntime fp32, speed-up at each one's faster thread "
            f"count: {ratios}\n"
        )
    else:
        checks.append('- OpenVINO: not installed, row skipped (`pip install -e ".[bench]"` adds it)\n')
    return results, checks


def compare_forms(models: Exported, test: Split, quick: bool) -> str:
    """fp32 graph forms side by side (export.graph.FORMS) for every cell, each in a session made by
    Classifier at the thread count its default picks for that batch; medians."""
    import onnx

    exported = onnx.load(models.fp32)
    _, _, time_major = load_trained(models.checkpoint)
    config = time_major.config
    torch.manual_seed(0)
    sessions = {}
    for cell in CELLS:
        net = time_major if cell == config.cell else DigitRNN(ModelConfig(cell, config.hidden, config.layers), False)
        weights = {k: v.detach().numpy() for k, v in net.state_dict().items()}
        for form in FORMS:
            model = build_model(weights, cell, config.hidden, config.layers, form=form)
            model.metadata_props.extend(exported.metadata_props)  # so that Classifier takes it
            for threads in sorted({1, usable_cpus()}):
                sessions[(cell, form, threads)] = Classifier(model.SerializeToString(), threads=threads).session
    rows, lines = [], []
    for batch in BATCHES:
        parallel = batch >= PARALLEL_BATCH and usable_cpus() >= PARALLEL_MIN_CPUS
        threads = usable_cpus() if parallel else 1  # what Classifier(threads=None) uses
        rows_input = to_rows(test.floats(slice(0, batch)).numpy())
        calls = {
            key[:2]: lambda s=s, feed={INPUT_NAME: rows_input}: s.run([OUTPUT_NAME], feed)
            for key, s in sessions.items()
            if key[2] == threads
        }
        samples = timed(calls, reps=REPS[batch] // (10 if quick else 3), budget=BUDGET / (10 if quick else 3))
        for cell in CELLS:
            us = {form: median(samples[(cell, form)]) * 1e6 for form in FORMS}
            fastest = min((f for f in FORMS if f != "auto"), key=us.get)
            rows.append(
                [cell, batch, threads]
                + [f"**{us[f]:,.1f}**" if f == fastest else f"{us[f]:,.1f}" for f in FORMS]
                + [fastest, f"{us['auto'] / us[fastest]:.2f}x"]
            )
    header = ["cell", "batch", "threads", *(f"{f} µs" for f in FORMS), "fastest single form", "auto / fastest"]
    choice = "; ".join(
        f"{cell}: {small} below batch {SWITCH_BATCH[cell]}, {large} from there"
        if small != large
        else f"{cell}: {small} at every batch size"
        for cell, (small, large) in AUTO_FORMS.items()
    )
    lines.append(f"\nauto (the default) runs: {choice}.\n")
    return table(header, rows) + "".join(lines)


def models_cell(models: Exported) -> str:
    return load_trained(models.checkpoint)[1].config.cell


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
        "below batch 256 and all cores from there on with at least 4 cores, else 1: section 1b); "
        "on a busy 2-core machine, 2 torch threads can be far "
        "slower than 1, "
        "so 'vs torch' compares with torch's faster setting at that batch. All rows take turns in 10 "
        "rounds; medians. Bold: the faster thread setting of each engine, which the targets use."
    )
    forms_about = (
        "\n\nThe fp32 graph forms `edge-export --form` can write (export/graph.py), for every cell (the "
        f"checkpoint's weights for {models_cell(models)}, an untrained model of the same size for the others), "
        "timed the same way (session.run, medians), each at the thread count `Classifier()` uses for that "
        "batch; bold: the fastest single form:\n\n"
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

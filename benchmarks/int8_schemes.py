"""Which int8 scheme answers the same on every CPU: the quantizer's choices measured on one checkpoint.

    python benchmarks/int8_schemes.py --checkpoint runs/bundled/checkpoint.pt [--data-dir ../shared/data]

For each scheme the per-step MatMul form is quantized by edge-export's own quantize_int8 and measured on the
10,000 MNIST test images: accuracy against fp32, whether every int32 product onnxruntime computes on this
CPU is exact (export.int8_exact, on 1,000 images: an inexact product is a kernel that saturates or rounds
here and may not elsewhere), and speed at batch 1 and 1024 on one thread. The scheme edge-export uses is
marked; its targets: exact here, and within 0.3 points of fp32.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from benchlib import ROOT, add_common_args, machine_header, median, section, table, target, timed

from edge_infer.model_info import INPUT_NAME, to_rows

# (name, quantize_dynamic keyword arguments, what it is)
SCHEMES = [
    ("u8 x s8", {"weight_type": "QInt8"}, "the quantizer's default: int8 weights"),
    ("u8 x s8, reduce_range", {"weight_type": "QInt8", "reduce_range": True}, "7-bit int8 weights"),
    ("u8 x u8", {"weight_type": "QUInt8"}, "uint8 weights: edge-export's choice"),
]
CHOSEN = "u8 x u8"


def main() -> None:
    import onnxruntime as ort

    from export import int8_exact
    from export.export import load_trained, quantize_int8
    from export.graph import build_graph
    from train.data import load_mnist

    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "bundled" / "checkpoint.pt")
    args = parser.parse_args()
    _, test = load_mnist(args.data_dir, download=False)
    images, labels = test.images.numpy(), test.labels.numpy()
    _, trained, time_major = load_trained(args.checkpoint)
    config = trained.config
    weights = {k: v.detach().numpy() for k, v in time_major.state_dict().items()}
    fp32 = build_graph(weights, config.cell, config.hidden, config.layers, form="per-step", gemm=False)

    def session(model) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def accuracy(s: ort.InferenceSession) -> tuple[float, np.ndarray]:
        logits = np.concatenate(
            [s.run(None, {INPUT_NAME: to_rows(images[i : i + 1000])})[0] for i in range(0, len(images), 1000)]
        )
        return float((logits.argmax(1) == labels).mean()), logits.argmax(1)

    base, base_pred = accuracy(session(fp32))
    one, big = to_rows(images[:1]), to_rows(images[:1024])
    rows, lines = [], []
    reps = 30 if args.quick else 300
    for name, options, what in SCHEMES:
        model = quantize_int8(fp32, **options)
        s = session(model)
        acc, pred = accuracy(s)
        products = int8_exact.check(int8_exact.instrument(model), to_rows(images[:1000]))
        times = timed({n: (lambda s=s, x=x: s.run(None, {INPUT_NAME: x})) for n, x in ((1, one), (1024, big))}, reps)
        rows.append(
            [
                f"**{name}**" if name == CHOSEN else name,
                what,
                f"{acc:.2%}",
                f"{(acc - base) * 100:+.2f}",
                f"{(pred != base_pred).mean():.2%}",
                "all exact" if products.exact else f"{products.inexact / products.products:.1%} inexact",
                f"{median(times[1]) * 1e6:.0f}",
                f"{median(times[1024]) / 1024 * 1e6:.1f}",
            ]
        )
        if name == CHOSEN:
            lines += [
                target("every int32 product exact on this CPU", products.summary(), products.exact),
                target("within 0.3 points of fp32", f"{(acc - base) * 100:+.2f} points", base - acc <= 0.003),
            ]
    print(machine_header("int8 schemes", args.quick))
    print(
        section(
            f"int8 schemes on {args.checkpoint} ({config.cell}-{config.hidden}; fp32 {base:.2%} on MNIST test)",
            table(
                [
                    "scheme",
                    "weights",
                    "MNIST test",
                    "vs fp32 (points)",
                    "predictions changed",
                    "int32 products on this CPU",
                    "batch 1 (µs)",
                    "batch 1024 (µs/image)",
                ],
                rows,
            ),
            "".join(lines),
        )
    )


if __name__ == "__main__":
    main()

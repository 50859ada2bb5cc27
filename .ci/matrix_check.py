"""Helpers for .ci/matrix (standard library only: it runs on the host python and in every venv).

python3 .ci/matrix_check.py pins pyproject.toml       -> the runtime's minimums as name==version lines
python  .ci/matrix_check.py versions [PINS]           -> 'onnxruntime 1.16.0, numpy ...'; with PINS, exit 1
                                                         unless each installed version is the pinned one
python3 .ci/matrix_check.py same REF.jsonl OTHER.jsonl -> exit 1 unless labels agree and every probability is
                                                         within 1e-5 (edge-infer --json outputs)
python3 .ci/matrix_check.py table < LINES              -> '|'-separated lines as aligned columns
"""

from __future__ import annotations

import json
import re
import sys

RUNTIME = ("onnxruntime", "numpy", "pillow", "click")
TOLERANCE = 1e-5


def pins(pyproject: str) -> int:
    import tomllib

    with open(pyproject, "rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    for dependency in dependencies:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)\s*", dependency.split(";")[0])
        if not match:
            print(f"matrix: cannot read a minimum from {dependency!r}", file=sys.stderr)
            return 1
        print(f"{match[1]}=={match[2]}")
    return 0


def _release(text: str) -> tuple[int, ...]:
    parts = [int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def versions(pins_file: str | None) -> int:
    import platform
    from importlib.metadata import version

    installed = {name: version(name) for name in RUNTIME}
    print(f"python {platform.python_version()}, " + ", ".join(f"{name} {v}" for name, v in installed.items()))
    if pins_file:
        wrong = []
        with open(pins_file) as f:
            lines = f.read().split()
        for line in lines:
            name, pinned = line.split("==")
            if _release(installed[name.lower()]) != _release(pinned):
                wrong.append(f"{name} {installed[name.lower()]} (pinned {pinned})")
        if wrong:
            print("matrix: not the pinned versions: " + ", ".join(wrong), file=sys.stderr)
            return 1
    return 0


def same(reference: str, other: str) -> int:
    def read(path: str) -> list[dict]:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    ref, got = read(reference), read(other)
    problems, worst = [], 0.0
    if [r["path"] for r in ref] != [g["path"] for g in got]:
        problems.append("different images")
    for r, g in zip(ref, got, strict=False):
        if "error" in r or "error" in g or r["label"] != g["label"]:
            problems.append(f"{r['path']}: label {r.get('label')} vs {g.get('label', g.get('error'))}")
            continue
        worst = max(worst, max(abs(a - b) for a, b in zip(r["probabilities"], g["probabilities"], strict=False)))
    if worst > TOLERANCE:
        problems.append(f"max |probability difference| {worst:.1e} > {TOLERANCE:.0e}")
    print(
        f"{len(got)} images, same labels, max |probability difference| {worst:.1e}"
        if not problems
        else "; ".join(problems)
    )
    return 1 if problems else 0


def table() -> int:
    """'|'-separated lines on stdin -> aligned columns, the first line as the header."""
    rows = [line.rstrip("\n").split("|") for line in sys.stdin if line.strip()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, r in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    return 0


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    handlers = {
        "pins": lambda: pins(*args),
        "versions": lambda: versions(args[0] if args else None),
        "same": lambda: same(*args),
        "table": table,
    }
    sys.exit(handlers[command]())

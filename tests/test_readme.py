"""The README's two set-up commands are what CI runs, word for word."""

from __future__ import annotations

import re

from .conftest import ROOT


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text().splitlines()
    start = readme.index("```bash")
    commands = readme[start + 1 : start + 3]
    assert readme[start + 3] == "```" and all(c.startswith("python3 -m venv") for c in commands)
    assert "pip install . " in commands[0] and "edge-infer examples/*.png" in commands[0]  # runtime, no extras
    extras = re.search(r'pip install -e "\.\[([\w,]+)\]"', commands[1])
    assert extras and {"train", "dev", "serve", "ray"} <= set(extras[1].split(",")) and commands[1].endswith("pytest")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci

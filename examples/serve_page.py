"""The README's picture of the drawing page (docs/serve-page.png; this script is its provenance):

    python examples/serve_page.py [--out docs/serve-page.png]

Starts `edge-infer serve` on a free loopback port, opens the page in headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium: the serve extra), draws a 7 on the canvas with pen strokes as the
browser test does, waits for the answer, and saves a screenshot of the page.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python examples/serve_page.py`: tests.serving lives in the project root
    sys.path.insert(1, str(ROOT))

from tests.serving import SEVEN, Browser, ServerProcess, missing_browser, missing_serve_parts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "serve-page.png")
    args = parser.parse_args()
    problem = missing_serve_parts() or missing_browser()
    if problem:
        sys.exit(f"error: {problem}")
    with ServerProcess() as server:
        browser = Browser(width=820, height=1040)
        try:
            browser.open(server.port)
            before = browser.answers()
            browser.draw(SEVEN, "pen")
            browser.wait_for_answer(before)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_bytes(browser.driver.get_screenshot_as_png())
        finally:
            browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

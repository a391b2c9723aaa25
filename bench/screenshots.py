"""Copy the page screenshots of the last e2e run into assets/screenshots/ as small PNGs for the README.

The e2e tests save full-page PNGs of each main page under test-output/e2e/pages/ on every run; this script is
run by hand when the pages changed (the tests never touch assets/):

    .venv/bin/python -m pytest tests/e2e && .venv/bin/python bench/screenshots.py

Each image is scaled to at most --width pixels wide, cut to at most --max-height pixels tall (the top of the
page, where its controls and first result are), and saved as a 256-colour optimised PNG.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "test-output" / "e2e" / "pages"
TARGET = ROOT / "assets" / "screenshots"
PAGES = ("first-visit", "first-visit-loading", "probe", "attribution", "layers", "tradeoffs", "dataset")
LIMIT_BYTES = 300_000


def shrink(source: Path, target: Path, width: int, max_height: int) -> int:
    """Write a small copy of `source` to `target`; returns its size in bytes."""
    with Image.open(source) as image:
        image = image.convert("RGB")
        if image.width > width:
            image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
        image = image.crop((0, 0, image.width, min(image.height, max_height)))
        small = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        target.parent.mkdir(parents=True, exist_ok=True)
        small.save(target, format="PNG", optimize=True)
    return target.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--target", type=Path, default=TARGET)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--max-height", type=int, default=1600)
    args = parser.parse_args(argv)
    found = [page for page in PAGES if (args.source / f"{page}.png").is_file()]
    if not found:
        print(f"no page screenshots in {args.source}; run the e2e tests first", file=sys.stderr)
        return 1
    too_big = []
    for page in found:
        size = shrink(args.source / f"{page}.png", args.target / f"{page}.png", args.width, args.max_height)
        print(f"{page}: {size / 1000:.0f} kB -> {args.target / f'{page}.png'}")
        if size > LIMIT_BYTES:
            too_big.append(page)
    missing = sorted(set(PAGES) - set(found))
    if missing:
        print(f"not in this run: {', '.join(missing)}")
    if too_big:
        print(f"over {LIMIT_BYTES // 1000} kB: {', '.join(too_big)}; try a smaller --max-height", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

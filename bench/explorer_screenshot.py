"""The docs' picture of the live explorer (docs/images/explorer.png): the shipped latent-2
Fashion-MNIST model on the real test split, in Debian's Chromium under Playwright.

    python bench/explorer_screenshot.py                   # writes docs/images/explorer.png
    python bench/explorer_screenshot.py --out /tmp/x.png --model models/fashion-mnist/dcgan-d8

The server runs in this process on a free port of 127.0.0.1 (as ``torch-vae explore --port 0``
would); the page is driven as a person would: a click on the map, an uploaded test image, two
test images interpolated and the scrubber half way.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from webtools import browser_page, chromium_missing, serving  # noqa: E402

from torch_vae import load_model  # noqa: E402
from torch_vae.explorer.app import create_app  # noqa: E402
from torch_vae.explorer.state import load_explorer  # noqa: E402


def settle(page) -> None:
    page.wait_for_function(
        "Object.values(window.explorerStats.inFlight).every((n) => n === 0)", timeout=20_000
    )


def drive(page, ex, folder: Path) -> None:
    """Put the page in a state that shows each of its parts."""
    page.wait_for_selector("body[data-ready='1']")
    settle(page)
    upload = folder / "upload.png"
    Image.fromarray(ex.images[12][..., 0]).save(upload)  # a test image, as a user's file
    page.set_input_files("#upload", str(upload))
    page.wait_for_function("document.getElementById('upload-recon').src.startsWith('data:')")
    page.fill("#a-index", "0")
    page.click("#a-pick")
    page.fill("#b-index", "1")
    page.click("#b-pick")
    page.select_option("#method", "slerp")
    settle(page)
    page.eval_on_selector("#scrub", "e => { e.value = 9; e.dispatchEvent(new Event('input')); }")
    box = page.locator("#map").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.74, box["y"] + box["height"] * 0.62)
    settle(page)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models/fashion-mnist/dcgan-d2"))
    ap.add_argument("--dataset", default=None, help="default: the model's")
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--out", default=str(ROOT / "docs/images/explorer.png"))
    ap.add_argument("--width", type=int, default=1190)
    ap.add_argument("--height", type=int, default=672)
    args = ap.parse_args()
    why = chromium_missing()
    if why:
        sys.exit(why)
    model = load_model(args.model)
    ex = load_explorer(model, Path(args.model), args.dataset or model.dataset, args.data_dir, 0)
    ex.name = Path(args.model).relative_to(ROOT).as_posix() if ROOT in Path(args.model).parents \
        else args.model  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, serving(create_app(ex)) as url:
        with browser_page(args.width, args.height) as page:
            page.goto(url)
            drive(page, ex, Path(tmp))
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

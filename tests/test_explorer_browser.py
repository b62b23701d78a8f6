"""The explorer's page end to end: the real server (uvicorn on a free port) and Debian's
Chromium under Playwright. A dragged slider, a click on the map, an upload and the
interpolation scrubber each change what the page shows, without a reload and with at most
one request in flight; the page asks nothing of any other host; a conditional model's class
picker changes the class of all of them. A screenshot is saved."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from webtools import browser_page, chromium_missing, serve_explorer, tiny_explorer

pytestmark = pytest.mark.slow


def src(page, element: str) -> str:
    return page.eval_on_selector(f"#{element}", "e => e.getAttribute('src') || ''")


def changes(page, element: str, before: str) -> None:
    """Wait until image ``element`` shows a PNG other than ``before``, and no request is left."""
    page.wait_for_function(
        f"""() => {{
            const s = document.getElementById({json.dumps(element)}).getAttribute("src") || "";
            const busy = Object.values(window.explorerStats.inFlight).some((n) => n > 0);
            return s.startsWith("data:image/png") && s !== {json.dumps(before)} && !busy;
        }}""",
        timeout=20_000,
    )


def drag(page, element, start: float, end: float, y: float = 0.5, steps: int = 25) -> None:
    element.scroll_into_view_if_needed()
    box = element.bounding_box()
    page.mouse.move(box["x"] + box["width"] * start, box["y"] + box["height"] * y)
    page.mouse.down()
    for i in range(1, steps + 1):
        frac = start + (end - start) * i / steps
        page.mouse.move(box["x"] + box["width"] * frac, box["y"] + box["height"] * y)
    page.mouse.up()


def slider_values(page) -> list[float]:
    return page.eval_on_selector_all("#sliders input", "es => es.map(e => Number(e.value))")


def test_the_page_in_chromium(tmp_path):
    why = chromium_missing()
    if why:
        pytest.skip(why)
    ex = tiny_explorer(latent_dims=3, n=40)
    with serve_explorer(ex) as url, browser_page() as page:
        problems, outside = [], []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("console", lambda m: m.type == "error" and problems.append(m.text))
        page.on("request", lambda r: r.url.startswith((url, "data:")) or outside.append(r.url))
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        changes(page, "decoded", "")
        assert page.locator("#sliders input").count() == 3
        assert page.inner_text("#legend").split() == [str(i) for i in range(10)]

        # drag the first slider: the image follows, one request at a time
        before, values = src(page, "decoded"), slider_values(page)
        drag(page, page.locator("#sliders input").first, 0.5, 0.95)
        changes(page, "decoded", before)
        assert slider_values(page)[0] > values[0] + 1 and slider_values(page)[1:] == values[1:]
        assert page.evaluate("window.explorerStats.maxInFlight") == 1

        # click, then drag, on the map: the image and the sliders take the point's code
        before, values = src(page, "decoded"), slider_values(page)
        page.locator("#map").click(position={"x": 360, "y": 110})
        changes(page, "decoded", before)
        assert slider_values(page) != values
        before = src(page, "decoded")
        drag(page, page.locator("#map"), 0.2, 0.7, y=0.6)
        changes(page, "decoded", before)

        # a random sample
        before = src(page, "decoded")
        page.click("#sample")
        changes(page, "decoded", before)

        # upload an image: its reconstruction appears, and the main image is it
        upload = tmp_path / "upload.png"
        Image.fromarray(ex.images[7][..., 0]).resize((64, 48)).save(upload)
        page.set_input_files("#upload", str(upload))
        changes(page, "upload-recon", "")
        assert src(page, "upload-input").startswith("data:image/png")
        assert page.inner_text("#source").startswith("your image")

        # interpolation: pick test images 3 and 9, then scrub from A to B
        page.fill("#a-index", "3")
        page.click("#a-pick")
        page.fill("#b-index", "9")
        page.click("#b-pick")
        page.select_option("#method", "slerp")
        changes(page, "frame", "")
        first = src(page, "frame")
        drag(page, page.locator("#scrub"), 0.02, 0.98)
        page.wait_for_function(f"document.getElementById('frame').src !== {json.dumps(first)}")

        page.screenshot(path=str(tmp_path / "explorer.png"), full_page=True)
        assert problems == [] and outside == []
    shot = np.asarray(Image.open(tmp_path / "explorer.png"))
    assert shot.shape[0] > 500 and shot.std() > 10  # a page, not a blank


def test_the_class_picker_of_a_conditional_model(tmp_path):
    """A conditional model's page has a class picker beside the sliders: the decoded image, a
    random sample, an upload and the interpolation are of the picked class."""
    why = chromium_missing()
    if why:
        pytest.skip(why)
    ex = tiny_explorer(latent_dims=3, n=40, conditional=True)
    with serve_explorer(ex) as url, browser_page() as page:
        problems, bodies = [], []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("console", lambda m: m.type == "error" and problems.append(m.text))
        page.on("request", lambda r: r.method == "POST" and bodies.append(r.post_data or ""))
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        changes(page, "decoded", "")
        assert page.is_visible("#class")
        options = page.eval_on_selector_all("#class option", "os => os.map(o => o.textContent)")
        assert options == [str(i) for i in range(10)]
        assert "conditional on 10 classes" in page.inner_text("#about")

        # another class: the same code decodes to another image, and every request names it
        before = src(page, "decoded")
        page.select_option("#class", "7")
        changes(page, "decoded", before)
        assert page.inner_text("#source").endswith("class 7")
        assert '"class":7' in bodies[-1]
        z = [float(v) for v in slider_values(page)]
        assert src(page, "decoded") == ex.decode(torch.tensor([z]), 7)[0]

        # a random sample of class 7
        before = src(page, "decoded")
        page.click("#sample")
        changes(page, "decoded", before)
        assert '"class":7' in bodies[-1] and page.inner_text("#source").endswith("class 7")

        # an upload is encoded and decoded as the picked class, and again when it changes
        upload = tmp_path / "upload.png"
        Image.fromarray(ex.images[5][..., 0]).save(upload)
        page.set_input_files("#upload", str(upload))
        changes(page, "upload-recon", "")
        assert page.inner_text("#source") == "your image: upload.png · class 7"
        before = src(page, "upload-recon")
        page.select_option("#class", "2")
        changes(page, "upload-recon", before)
        page.wait_for_function("document.getElementById('source').textContent.endsWith('2')")
        assert page.inner_text("#source") == "class changed · class 2"  # the code stays

        # the interpolation's frames are of the picked class too
        page.fill("#a-index", "3")
        page.click("#a-pick")
        changes(page, "frame", "")
        first = src(page, "frame")
        page.select_option("#class", "4")
        page.wait_for_function(f"document.getElementById('frame').src !== {json.dumps(first)}")

        page.screenshot(path=str(tmp_path / "explorer-conditional.png"), full_page=True)
        assert problems == []
    shot = np.asarray(Image.open(tmp_path / "explorer-conditional.png"))
    assert shot.shape[0] > 500 and shot.std() > 10

"""The explorer's page end to end: the real server (uvicorn on a free port) and Debian's
Chromium under Playwright. A dragged slider, a click on the map, an upload and the
interpolation scrubber each change what the page shows, without a reload and with at most
one request in flight; the page asks nothing of any other host; a conditional model's class
picker changes the class of all of them; a discrete (VQ) model's code grid is edited cell by
cell. A screenshot is saved."""

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


def grid_cells(page) -> list[int]:
    return page.eval_on_selector_all("#grid .cell", "cs => cs.map(c => Number(c.textContent))")


def answered(page, before: int) -> None:
    """Wait until the page has had an answer since ``before`` and none is in flight."""
    page.wait_for_function(
        f"""() => window.explorerStats.answers > {before}
            && Object.values(window.explorerStats.inFlight).every((n) => n === 0)""",
        timeout=20_000,
    )


def test_the_code_grid_of_a_discrete_model(tmp_path):
    """A VQ model's page shows its code grid instead of sliders: a cell's code is stepped,
    typed, moved to with the arrow keys or drawn at random, and the grid decodes as it
    changes; the map, random samples (uniform, said so), uploads and the interpolation's
    frames put their code grids in it."""
    why = chromium_missing()
    if why:
        pytest.skip(why)
    ex = tiny_explorer(n=40, discrete=True)

    def grid(i: int) -> list[int]:
        return ex.grids[i].flatten().tolist()

    def decoded(cells: list[int]) -> str:
        return ex.decode(torch.tensor(cells).view(1, 8, 8))[0]

    with serve_explorer(ex) as url, browser_page() as page:
        problems, outside, bodies = [], [], []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("console", lambda m: m.type == "error" and problems.append(m.text))
        page.on("request", lambda r: r.url.startswith((url, "data:")) or outside.append(r.url))
        page.on("request", lambda r: r.method == "POST" and bodies.append(r.post_data or ""))
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        changes(page, "decoded", "")
        # the grid of test image 0 instead of sliders, no "z = 0" and no slerp
        assert page.locator("#grid .cell").count() == 64 and page.is_visible("#grid")
        assert page.locator("#sliders input").count() == 0 and not page.is_visible("#origin")
        assert grid_cells(page) == grid(0) and src(page, "decoded") == decoded(grid(0))
        assert page.eval_on_selector_all("#method option", "os => os.map(o => o.value)") == [
            "linear"
        ]
        assert "8x8 codes of 16" in page.inner_text("#about")
        assert "Code grid (8x8 codes of 16)" in page.inner_text("#latent-title")

        # step a cell's code up: the cell and the image follow, one request at a time
        cells = grid(0)
        page.click("#grid .cell >> nth=27")
        assert "row 3, column 3" in page.inner_text("#cell-name")
        before = src(page, "decoded")
        page.click("#cell-up")
        cells[27] = (cells[27] + 1) % 16
        changes(page, "decoded", before)
        assert grid_cells(page) == cells and src(page, "decoded") == decoded(cells)
        assert json.loads(bodies[-1])["z"] == cells
        assert page.inner_text("#source") == f"code grid: row 3, column 3 = {cells[27]}"
        usage = (ex.grids.flatten(1)[:, 27] == cells[27]).sum().item()
        assert f"is there in {usage} of the 40 test images" in page.inner_text("#cell-usage")

        # type a code into the selected cell
        before = src(page, "decoded")
        cells[27] = 9 if cells[27] != 9 else 10
        page.fill("#cell-code", str(cells[27]))
        changes(page, "decoded", before)
        assert grid_cells(page) == cells and src(page, "decoded") == decoded(cells)

        # the arrow keys move to the next cell, "-" steps its code down
        page.focus("#grid .cell >> nth=27")
        page.keyboard.press("ArrowDown")
        before = src(page, "decoded")
        page.keyboard.press("-")
        cells[35] = (cells[35] - 1) % 16
        changes(page, "decoded", before)
        assert grid_cells(page) == cells and "row 4, column 3" in page.inner_text("#cell-name")

        # a random code for the cell (it may draw the code it has: wait for the answer)
        answers = page.evaluate("window.explorerStats.answers")
        page.click("#cell-random")
        answered(page, answers)
        drawn = grid_cells(page)
        assert drawn[:35] == cells[:35] and drawn[36:] == cells[36:] and 0 <= drawn[35] < 16
        assert src(page, "decoded") == decoded(drawn)

        # an index out of range is refused on the page, without a request
        answers, sent = page.evaluate("window.explorerStats.answers"), len(bodies)
        page.fill("#cell-code", "16")
        page.dispatch_event("#cell-code", "change")
        assert "an integer from 0 to 15" in page.inner_text("#status")
        assert len(bodies) == sent and grid_cells(page) == drawn
        assert page.input_value("#cell-code") == str(drawn[35])

        # a click on the map: the grid takes the point's quantized codes
        before = src(page, "decoded")
        page.locator("#map").click(position={"x": 60, "y": 400})
        changes(page, "decoded", before)
        point = json.loads(bodies[-1])["xy"]
        got = page.evaluate("state.z")  # the page's code
        assert grid_cells(page) == got
        assert got == ex.from_map(torch.tensor([point])).flatten().tolist()

        # a random sample: uniform codes, and the page says so
        before = src(page, "decoded")
        page.click("#sample")
        changes(page, "decoded", before)
        assert page.inner_text("#source") == "a random sample (uniform codes: no fitted prior)"
        assert "samples: uniform codes" in page.inner_text("#about")

        # an upload: the grid shows its codes
        upload = tmp_path / "upload.png"
        Image.fromarray(ex.images[7][..., 0]).save(upload)
        page.set_input_files("#upload", str(upload))
        changes(page, "upload-recon", "")
        page.wait_for_function("document.getElementById('source').textContent.startsWith('your')")
        assert grid_cells(page) == grid(7)

        # interpolation between test images 3 and 9: the last frame's quantized codes are B's;
        # "edit" puts them in the grid, and a click on A shows A's
        page.fill("#a-index", "3")
        page.click("#a-pick")
        page.fill("#b-index", "9")
        page.click("#b-pick")
        changes(page, "frame", "")
        page.eval_on_selector(
            "#scrub", "e => { e.value = 15; e.dispatchEvent(new Event('input')); }"
        )
        differ = sum(a != b for a, b in zip(grid(3), grid(9), strict=True))
        want = f"frame 15 of 15, codes quantized: {differ} cells differ from A, 0 from B"
        # picking A starts an interpolation to the B before, which picking B replaces: wait
        # for the note of the last one
        page.wait_for_function(
            "want => document.getElementById('frame-note').textContent === want", arg=want
        )
        assert page.is_visible("#frame-edit") and page.inner_text("#frame-note") == want
        before = src(page, "decoded")
        page.click("#frame-edit")
        changes(page, "decoded", before)
        assert grid_cells(page) == grid(9)
        before = src(page, "decoded")
        page.click("#a-thumb")
        changes(page, "decoded", before)
        assert grid_cells(page) == grid(3) and page.inner_text("#source") == "test image 3"

        assert page.evaluate("window.explorerStats.maxInFlight") == 1
        page.screenshot(path=str(tmp_path / "explorer-discrete.png"), full_page=True)
        assert problems == [] and outside == []
    shot = np.asarray(Image.open(tmp_path / "explorer-discrete.png"))
    assert shot.shape[0] > 500 and shot.std() > 10


@pytest.mark.parametrize("discrete", [False, True])
def test_the_page_fits_a_phone_and_says_what_went_wrong_where_it_happened(tmp_path, discrete):
    """At a phone's 375 pixels the page is one column no wider than the screen; a refused
    upload is said beside the upload and clears the panel; the map moves with the arrow keys;
    an empty index is named; a stopped server is said as such."""
    why = chromium_missing()
    if why:
        pytest.skip(why)
    ex = tiny_explorer(n=40, discrete=discrete)
    with serve_explorer(ex) as url, browser_page(width=375, height=800) as page:
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        changes(page, "decoded", "")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"the page is {width} pixels wide on a 375-pixel screen"
        page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)

        good = tmp_path / "good.png"
        Image.fromarray(ex.images[7][..., 0]).save(good)
        page.set_input_files("#upload", str(good))
        changes(page, "upload-recon", "")
        bad = tmp_path / "broken.png"
        bad.write_bytes(good.read_bytes()[:40])  # a PNG cut short
        page.set_input_files("#upload", str(bad))
        page.wait_for_function("document.getElementById('upload-error').textContent !== ''")
        assert page.inner_text("#upload-error").startswith("broken.png: 415: not an image")
        assert src(page, "upload-recon") == "" and src(page, "upload-input") == ""

        before = src(page, "decoded")  # the map from the keyboard
        page.focus("#map")
        page.keyboard.press("ArrowRight")
        changes(page, "decoded", before)
        assert page.inner_text("#source").startswith("map: (")

        page.fill("#b-index", "")
        page.click("#b-pick")
        assert page.inner_text("#interp-error") == "B: enter a test image index"
    # the server is gone, the page still open: it says so
    with browser_page() as page:
        with serve_explorer(ex) as url:
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']")
            changes(page, "decoded", "")
        page.click("#sample")
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('cannot reach the "
            "explorer\\'s server')", timeout=20_000)  # fmt: skip

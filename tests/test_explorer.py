"""The live explorer's server (torch-vae explore): its JSON API through the ASGI test client,
its refusals of bad requests (4xx with a message, never a 500), a real server on a free port,
and the command line."""

import base64
import io
import os
import re
import signal
import subprocess
import sys
import warnings
import zlib

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from webtools import serve_explorer, tiny_explorer, tiny_model

import fakedata
from torch_vae.analysis import latent as explore
from torch_vae.cli import main
from torch_vae.errors import TorchVaeError
from torch_vae.explorer.app import create_app, listen
from torch_vae.explorer.state import (
    MAX_UPLOAD_PIXELS,
    build_explorer,
    find_sampler,
    read_upload,
)

with warnings.catch_warnings():  # Starlette suggests another HTTP client; httpx works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def explorer():
    return tiny_explorer(latent_dims=3)


@pytest.fixture(scope="module")
def client(explorer):
    with TestClient(create_app(explorer, sliders=2)) as c:
        yield c


def png_of(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def file_bytes(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_info_orders_the_dimensions_by_kl(client, explorer):
    info = client.get("/api/info").json()
    kls = [d["kl"] for d in info["dims"]]
    assert sorted(d["index"] for d in info["dims"]) == [0, 1, 2]
    assert kls == sorted(kls, reverse=True)
    assert kls == pytest.approx([float(explorer.kl[d["index"]]) for d in info["dims"]])
    assert [d["active"] for d in info["dims"]] == [k > 0.01 for k in kls]
    assert info["sliders"] == 2 and info["map"] == "pca" and info["images"] == 24
    assert info["classes"] == [str(i) for i in range(10)] and info["latent_dims"] == 3


def test_map_holds_every_test_image_with_its_class(client, explorer):
    data = client.get("/api/map").json()
    assert len(data["x"]) == len(data["y"]) == 24
    assert data["labels"] == [i % 10 for i in range(24)]
    xy = explorer.to_map(explorer.means)  # the codes' projections are the map
    assert np.allclose(np.stack([data["x"], data["y"]], 1), xy.numpy(), atol=1e-4)


def test_decode_gives_the_image_of_the_code_and_its_place(client, explorer):
    z = [0.5, -1.0, 2.0]
    got = client.post("/api/decode", json={"z": z}).json()
    image = png_of(got["image"])
    assert image.shape == (32, 32)
    with torch.no_grad():
        want = explorer.model.decode(torch.tensor([z]))[0, 0].mul(255).round().numpy()
    assert np.abs(image.astype(int) - want.astype(int)).max() <= 1
    assert got["xy"] == pytest.approx(explorer.to_map(torch.tensor([z]))[0].tolist(), abs=1e-5)
    other = client.post("/api/decode", json={"z": [0.5, -1.0, -2.0]}).json()
    assert other["image"] != got["image"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"z": [1, 2]}',  # too short
        b'{"z": [1, 2, 3, 4]}',  # too long
        b'{"z": [NaN, 0, 0]}',
        b'{"z": [Infinity, 0, 0]}',
        b'{"z": [-Infinity, 0, 0]}',
        b'{"z": [1e400, 0, 0]}',  # infinity once parsed
        b'{"z": [1e9, 0, 0]}',  # beyond Z_BOUND
        b'{"z": ["1", 0, 0]}',  # a string, not a number
        b'{"z": [true, 0, 0]}',
        b'{"z": [null, 0, 0]}',
        b'{"z": 5}',
        b'{"z": [0, 0, 0], "extra": 1}',
        b'{"y": [0, 0, 0]}',
        b"[0, 0, 0]",
        b"{not json",
        b"",
        b"\xff\xfe",
    ],
)
def test_decode_refuses_bad_codes_with_a_message(client, body):
    r = client.post("/api/decode", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], str) and r.json()["detail"]


def test_errors_are_4xx_with_a_message(client):
    assert client.post("/api/decode", data={"z": "1"}).status_code == 415  # a form, not JSON
    r = client.get("/api/images/24")
    assert r.status_code == 422 and "less than or equal to 23" in r.json()["detail"]
    assert client.get("/api/images/-1").status_code == 422
    assert client.get("/api/images/x").status_code == 422
    assert client.get("/api/decode").status_code == 405
    assert client.get("/api/nothing").status_code == 404
    r = client.post("/api/interpolate", json={"a": [0] * 3, "b": [0] * 3, "method": "cubic"})
    assert r.status_code == 422 and "method" in r.json()["detail"]
    r = client.post("/api/interpolate", json={"a": [0] * 3, "b": [0] * 3, "steps": 1000})
    assert r.status_code == 422
    assert client.post("/api/sample", json={"seed": -1}).status_code == 422
    assert client.post("/api/sample", json={"seed": 1.5}).status_code == 422
    json_type = {"Content-Type": "application/json"}
    r = client.post("/api/map/decode", content=b'{"xy": [0, NaN]}', headers=json_type)
    assert r.status_code == 422 and "finite" in r.json()["detail"]
    r = client.post("/api/decode", content=b'{"z":', headers=json_type)  # cut short
    assert r.status_code == 422
    assert r.json()["detail"] == "body: not valid JSON at character 5 (Expecting value)"
    deep = b'{"z": ' + b"[" * 5000 + b"]" * 5000 + b"}"  # past Python's recursion limit
    r = client.post("/api/decode", content=deep, headers=json_type)
    assert r.status_code == 422, r.text
    deep_detail = ("body: not valid JSON (nested too deeply, a number of more than 4,300 digits, "
                   "or not JSON text)")  # fmt: skip
    assert r.json()["detail"] == deep_detail
    long = b'{"z": [1' + b"0" * 5000 + b"]}"  # JSON, but past Python's 4,300 digits
    r = client.post("/api/decode", content=long, headers=json_type)
    assert r.status_code == 422 and r.json()["detail"] == deep_detail
    r = client.post("/api/decode", files={"z": (None, "1")})  # a multipart form
    assert r.status_code == 415 and "(it came as multipart/form-data)" in r.json()["detail"]
    for kind in ("text/plain", "application/x-www-form-urlencoded"):  # JSON sent as another
        r = client.post("/api/decode", content=b'{"z": [0, 0, 0]}', headers={"Content-Type": kind})
        assert r.status_code == 415, r.text
        assert r.json()["detail"] == ("body: send it as JSON with Content-Type: "
                                      f"application/json (it came as {kind})")  # fmt: skip


def test_a_map_point_decodes_to_a_code_on_its_place(client, explorer):
    got = client.post("/api/map/decode", json={"xy": [0.3, -0.2]}).json()
    assert got["xy"] == pytest.approx([0.3, -0.2], abs=1e-4)  # on the plane: back to the point
    assert got["z"] == pytest.approx(explorer.from_map(torch.tensor([[0.3, -0.2]]))[0].tolist())
    same = client.post("/api/decode", json={"z": got["z"]}).json()
    assert same["image"] == got["image"]


def test_a_latent_2_map_is_the_code_itself():
    ex = tiny_explorer(latent_dims=2, n=6)
    with TestClient(create_app(ex)) as c:
        assert c.get("/api/info").json()["map"] == "code"
        got = c.post("/api/map/decode", json={"xy": [1.5, -0.5]}).json()
        assert got["z"] == got["xy"] == [1.5, -0.5]


def test_random_samples_come_from_the_seed_or_the_sampler(client, explorer, monkeypatch):
    a = client.post("/api/sample", json={"seed": 7}).json()
    assert a == client.post("/api/sample", json={"seed": 7}).json()
    assert a["z"] == pytest.approx(torch.randn(1, 3, generator=torch.manual_seed(7))[0].tolist())
    assert client.post("/api/sample", json={}).json()["z"] != a["z"]
    no_body = client.post("/api/sample")  # the seed is optional, and so is the body
    assert no_body.status_code == 200 and no_body.json()["z"] != a["z"]

    class Sampler:
        def sample(self, n, generator, labels=None):  # priors.base.Prior's signature
            return torch.full((n, 3), 0.25)

    monkeypatch.setattr(explorer, "sampler", Sampler())
    assert client.post("/api/sample", json={"seed": 7}).json()["z"] == [0.25] * 3


def test_the_explorer_samples_from_a_fitted_prior_only_where_it_fits(monkeypatch, tmp_path, caplog):
    import types

    from torch_vae.explorer import state

    fitted = types.SimpleNamespace(dims=3)
    for found, latent_dims, expected in [(None, 3, None), (fitted, 3, fitted), (fitted, 8, None)]:
        monkeypatch.setattr(state, "load_sampler", lambda path, f=found: f)
        assert find_sampler(tmp_path, latent_dims) is expected
    assert "draws 3-d codes, the model has 8" in caplog.text

    def damaged(path):
        raise TorchVaeError("was fitted to other weights")

    monkeypatch.setattr(state, "load_sampler", damaged)
    assert find_sampler(tmp_path, 3) is None and "other weights" in caplog.text


def test_test_images_come_with_code_reconstruction_and_place(client, explorer):
    got = client.get("/api/images/5").json()
    assert got["index"] == 5 and got["label"] == 5
    assert (png_of(got["input"]) == explorer.images[5][..., 0]).all()
    assert got["z"] == pytest.approx(explorer.means[5].tolist(), abs=1e-5)
    assert got["xy"] == pytest.approx(explorer.xy[5].tolist(), abs=1e-4)
    assert png_of(got["image"]).shape == (32, 32)


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_interpolation_runs_from_a_to_b(client, method):
    a, b = [1.0, 0.0, -1.0], [-0.5, 2.0, 0.5]
    got = client.post(
        "/api/interpolate", json={"a": a, "b": b, "steps": 5, "method": method}
    ).json()
    assert len(got["frames"]) == len(got["z"]) == len(got["xy"]) == 5
    assert got["z"][0] == pytest.approx(a, abs=1e-5) and got["z"][-1] == pytest.approx(b, abs=1e-5)
    ends = [client.post("/api/decode", json={"z": z}).json()["image"] for z in (a, b)]
    for frame, end in zip([got["frames"][0], got["frames"][-1]], ends, strict=True):
        assert np.abs(png_of(frame).astype(int) - png_of(end)).max() <= 1


def test_uploads_of_any_size_and_mode_are_encoded(client, explorer):
    rgb = Image.fromarray(np.tile(np.linspace(0, 255, 90, dtype=np.uint8), (60, 1)))
    for data in (
        file_bytes(rgb.convert("RGB"), "JPEG"),
        file_bytes(rgb, "PNG"),
        file_bytes(rgb.convert("I;16"), "PNG"),
        file_bytes(rgb.convert("RGBA"), "WEBP"),
        file_bytes(rgb.convert("P"), "GIF"),
    ):
        r = client.post("/api/encode", files={"file": ("any.bin", data, "text/plain")})
        assert r.status_code == 200, r.text
        got = r.json()
        assert png_of(got["input"]).shape == (32, 32) and png_of(got["image"]).shape == (32, 32)
        z = torch.tensor([got["z"]])
        assert got["xy"] == pytest.approx(explorer.to_map(z)[0].tolist(), abs=1e-4)


def test_bad_uploads_are_refused_with_a_message(client):
    def post(data, name="x.png"):
        r = client.post("/api/encode", files={"file": (name, data, "image/png")})
        assert isinstance(r.json()["detail"], str)
        return r.status_code, r.json()["detail"]

    assert post(b"hello")[0] == 415
    assert post(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")[0] == 415  # no Ghostscript
    assert post(b"") == (422, "the file is empty")
    png = file_bytes(Image.new("L", (40, 40), 128))
    assert post(png[: len(png) // 2])[0] == 422  # truncated
    bomb = file_bytes(Image.new("1", (5000, 5000)))  # 25 megapixels in a few kB
    status, detail = post(bomb)
    assert len(bomb) < 100_000 and status == 413 and "5000x5000" in detail
    header = bytearray(bomb)  # the same PNG saying it is 100000x100000: past Pillow's limit
    header[16:24] = (100000).to_bytes(4, "big") * 2
    header[29:33] = zlib.crc32(bytes(header[12:29])).to_bytes(4, "big")
    status, detail = post(bytes(header))
    assert (status, detail) == (413, "the image has 10,000,000,000 pixels; at most 20,000,000 "
                                     "in all")  # fmt: skip
    status, detail = post(b"\0" * (10 * 2**20 + 1))
    assert status == 413
    r = client.post("/api/encode", files={"other": ("x.png", png, "image/png")})
    assert r.status_code == 422 and "file" in r.json()["detail"]
    r = client.post("/api/encode", data={"file": "hello"})  # text where the file goes
    assert r.status_code == 422 and r.json()["detail"] == (
        "file: an image file, sent as a multipart file part with a filename, not text"
    )
    r = client.post("/api/encode", content=b"--x\r\ngarbage", headers={
        "Content-Type": "multipart/form-data; boundary=x"})  # fmt: skip
    assert 400 <= r.status_code < 500


def test_read_upload_checks_the_pixels_before_decoding_them():
    big = file_bytes(Image.new("L", (MAX_UPLOAD_PIXELS // 1000 + 1, 1000)))
    with pytest.raises(TorchVaeError, match="at most 20,000,000") as exc:
        read_upload(big, 1, 32)
    assert exc.value.status == 413
    ok = read_upload(file_bytes(Image.new("RGB", (64, 16), (255, 0, 0))), 3, 8)
    assert ok.shape == (8, 8, 3) and (ok[..., 0] == 255).all()


def test_the_page_needs_nothing_from_outside(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    head = client.head("/")  # as link checkers and monitors ask
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(page.content))
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(assets) == ["data:,", "explorer.css", "explorer.js"]  # data:, no favicon
    for name in ("explorer.css", "explorer.js"):
        r = client.get("/" + name)
        assert r.status_code == 200
        assert not re.search(r"https?://|//[a-z]|@import|url\(", r.text), name
    assert "/api/decode" in client.get("/openapi.json").text
    assert client.get("/docs").status_code == 404  # FastAPI's pages load scripts from a CDN


def test_a_real_server_on_a_free_port(explorer):
    with serve_explorer(explorer) as url:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url) and not url.endswith(":0/")
        with httpx.Client(base_url=url) as http:
            assert http.get("api/info").json()["latent_dims"] == 3
            r = http.post("api/decode", json={"z": [0, 0, 0]})
            assert r.status_code == 200 and r.json()["image"].startswith("data:image/png")
            r = http.post("api/encode", content=b"x" * (11 * 2**20), headers={
                "Content-Type": "multipart/form-data; boundary=x"})  # fmt: skip
            assert r.status_code == 413
            assert "an uploaded image may have 10,485,760 bytes (10 MiB) at most" in r.text
            r = http.post("api/decode", content=b" " * (11 * 2**20), headers={
                "Content-Type": "application/json"})  # fmt: skip
            assert r.status_code == 413 and "uploaded image" not in r.text
            assert "far more than any request of this route needs" in r.json()["detail"]


def test_a_port_in_use_is_one_line():
    sock = listen("127.0.0.1", 0)
    sock.listen()
    try:
        port = sock.getsockname()[1]
        with pytest.raises(TorchVaeError, match=f"cannot listen on 127.0.0.1:{port}.*--port 0"):
            listen("127.0.0.1", port)
    finally:
        sock.close()
    with pytest.raises(TorchVaeError, match="--host"):
        listen("no such host.invalid", 0)


def test_an_address_not_of_this_machine_names_host_not_port():
    # 192.0.2.1 (TEST-NET-1) is never a local address
    with pytest.raises(
        TorchVaeError, match=r"192\.0\.2\.1:0 .*--host must be an address of this machine"
    ):
        listen("192.0.2.1", 0)


def test_explore_flags_are_checked(capsys):
    assert main(["explore", "--model", "m", "--port", "70000"]) == 1
    assert "--port must be 0..65535" in capsys.readouterr().err
    assert main(["explore", "--model", "m", "--sliders", "0"]) == 1
    assert main(["explore", "--model", "m", "--nimages", "1"]) == 1


@pytest.mark.slow  # a server process and a signal, 4 s
def test_explore_command_serves_until_interrupted(tmp_path):
    """The real command in a process: it prints the address it listens on (a free port with
    --port 0), serves the test split of the model's dataset, and stops on Ctrl-C."""
    model = tiny_model(latent_dims=3)
    model.save_pretrained(tmp_path / "model", dataset=f"folder:{tmp_path / 'images'}")
    for split in ("train", "test"):
        for label in ("cat", "dog"):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("L", (20, 20), 40 * i).save(folder / f"{i}.png")
    cmd = [
        sys.executable, "-m", "torch_vae", "explore", "--model", str(tmp_path / "model"),
        "--port", "0", "--data_dir", str(tmp_path / "data"), "--quiet", "--threads", "1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        url = re.search(r"serving (http://127\.0\.0\.1:\d+/)", line)
        assert url, (line, proc.stderr.read() if proc.poll() is not None else "")
        with httpx.Client(base_url=url[1], timeout=30) as http:
            info = http.get("api/info").json()
            assert info["classes"] == ["cat", "dog"] and info["images"] == 6
            assert http.get("api/map").json()["labels"] == [0, 0, 0, 1, 1, 1]
            assert "torch-vae explorer" in http.get("/").text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def conditional():
    """A conditional model's explorer (classes "0".."9", image i of class i % 10) and client."""
    ex = tiny_explorer(latent_dims=3, conditional=True)
    with TestClient(create_app(ex)) as c:
        yield ex, c


def test_a_conditional_model_decodes_the_class_each_request_names(conditional):
    ex, client = conditional
    info = client.get("/api/info").json()
    assert info["conditional"] is True and info["classes"] == [str(i) for i in range(10)]
    z = [0.5, -1.0, 2.0]
    three = client.post("/api/decode", json={"z": z, "class": 3}).json()
    assert three["image"] == ex.decode(torch.tensor([z]), 3)[0]
    assert client.post("/api/decode", json={"z": z, "class": "3"}).json() == three  # by name
    assert client.post("/api/decode", json={"z": z, "class": 7}).json()["image"] != three["image"]
    point = client.post("/api/map/decode", json={"xy": [0.3, -0.2], "class": 4}).json()
    assert point["image"] == ex.decode(torch.tensor([point["z"]]), 4)[0]
    five = client.post("/api/sample", json={"seed": 4, "class": 5}).json()
    assert five["label"] == 5 and five["image"] == ex.decode(torch.tensor([five["z"]]), 5)[0]
    drawn = client.post("/api/sample", json={"seed": 4}).json()  # a class drawn with the seed
    assert drawn == client.post("/api/sample", json={"seed": 4}).json()
    assert drawn["z"] == five["z"] and drawn["image"] == ex.decode(
        torch.tensor([drawn["z"]]), drawn["label"]
    )[0]  # fmt: skip
    path = client.post("/api/interpolate", json={"a": z, "b": [0, 0, 0], "steps": 3,
                                                 "class": 2}).json()  # fmt: skip
    assert path["frames"][0] == ex.decode(torch.tensor([z]), 2)[0]


def test_a_conditional_model_encodes_test_images_as_theirs_and_uploads_as_asked(conditional):
    ex, client = conditional
    got = client.get("/api/images/13").json()  # a 3
    assert got["label"] == 3
    assert got["z"] == pytest.approx(ex.encode(ex.images[13:14], 3)[0].tolist(), abs=1e-5)
    assert got["z"] == pytest.approx(ex.means[13].tolist(), abs=1e-5)  # the map's code
    assert got["image"] == ex.decode(torch.tensor([got["z"]]), 3)[0]
    data = file_bytes(Image.fromarray(ex.images[13][..., 0]))
    for value, label in (("4", 4), ("7", 7)):
        up = client.post("/api/encode", files={"file": ("a.png", data)}, data={"class": value})
        assert up.status_code == 200, up.text
        assert up.json()["z"] == pytest.approx(ex.encode(ex.images[13:14], label)[0].tolist(),
                                               abs=1e-5)  # fmt: skip


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/api/decode", {"z": [0, 0, 0]}, "class: Field required"),
        ("/api/decode", {"z": [0, 0, 0], "class": 10}, "unknown class 10: an index 0 to 9"),
        ("/api/decode", {"z": [0, 0, 0], "class": "sneaker"}, "unknown class 'sneaker'"),
        ("/api/decode", {"z": [0, 0, 0], "class": True}, "unknown class True"),
        ("/api/decode", {"z": [0, 0, 0], "class": -1}, "unknown class -1"),
        ("/api/map/decode", {"xy": [0, 0]}, "class: Field required"),
        ("/api/interpolate", {"a": [0, 0, 0], "b": [0, 0, 0]}, "class: Field required"),
        ("/api/sample", {"class": [3]}, "unknown class [3]"),
    ],
)
def test_a_conditional_model_refuses_a_missing_or_unknown_class(conditional, path, body, message):
    r = conditional[1].post(path, json=body)
    assert r.status_code == 422 and message in r.json()["detail"], r.text


def test_an_upload_to_a_conditional_model_needs_a_known_class(conditional):
    ex, client = conditional
    data = file_bytes(Image.fromarray(ex.images[0][..., 0]))
    r = client.post("/api/encode", files={"file": ("a.png", data)})
    assert r.status_code == 422 and "class: Field required" in r.json()["detail"]
    r = client.post("/api/encode", files={"file": ("a.png", data)}, data={"class": "10"})
    assert r.status_code == 422 and "class: Input should be '0'" in r.json()["detail"]
    r = client.post("/api/encode", files={"file": ("a.png", data)}, data={"class": "1", "z": "0"})
    assert r.status_code == 422
    assert r.json()["detail"] == "unknown form field(s) z: this endpoint takes file and class"


def test_an_unconditional_model_takes_no_class(client):
    r = client.post("/api/decode", json={"z": [0, 0, 0], "class": 3})
    assert r.status_code == 422 and "class: Extra inputs are not permitted" in r.json()["detail"]
    png = file_bytes(Image.new("L", (40, 40), 128))
    r = client.post("/api/encode", files={"file": ("a.png", png)}, data={"class": "1"})
    assert r.status_code == 422
    assert r.json()["detail"] == "unknown form field(s) class: this endpoint takes file"
    assert client.post("/api/sample", json={"seed": 1}).json()["label"] is None
    assert client.get("/api/info").json()["conditional"] is False


def test_a_conditional_explorer_needs_every_image_s_class():
    images = fakedata.blobs(4, 32, 1, seed=0)
    model = tiny_model(classes=("a", "b"))
    for labels in (None, np.array([0, 1, -1, 0])):
        with pytest.raises(TorchVaeError, match="needs the class of every test image"):
            build_explorer(model, images, labels, ["a", "b"])


# --- a discrete (VQ) model: its code is a grid of code indices ---------------------------


@pytest.fixture(scope="module")
def vq():
    """A VQ model's explorer (an 8x8 grid of codes 0..15, vectors of 3 numbers) and client."""
    ex = tiny_explorer(discrete=True)
    with TestClient(create_app(ex)) as c:
        yield ex, c


def grid_list(ex, i: int) -> list[int]:
    """Test image ``i``'s code grid as the API's list: 64 indices, row by row."""
    return ex.grids[i].flatten().tolist()


def decoded_png(ex, grid: list[int], label=None) -> np.ndarray:
    with torch.no_grad():
        y = None if label is None else torch.tensor([label])
        image = ex.model.decode(torch.tensor(grid).view(1, 8, 8), y)
    return image[0, 0].mul(255).round().numpy()


def usage_of(ex, grid: list[int]) -> list[float]:
    """For each cell: the share of the test images whose grid has that code there."""
    return (ex.grids.flatten(1) == torch.tensor(grid)).float().mean(0).tolist()


def test_info_of_a_discrete_model_gives_its_grid_and_codebook(vq, client):
    info = vq[1].get("/api/info").json()
    assert info["latent_kind"] == "discrete" and info["grid"] == [8, 8]
    assert info["codebook_size"] == 16 and info["latent_dims"] == 3
    assert info["dims"] == [] and info["sliders"] == 0 and info["map"] == "pca"
    assert info["fitted_sampler"] is False and info["sampler"].startswith("uniform codes")
    gaussian = client.get("/api/info").json()
    assert gaussian["latent_kind"] == "gaussian" and gaussian["grid"] is None
    assert gaussian["codebook_size"] is None and gaussian["fitted_sampler"] is False


def test_a_discrete_model_decodes_a_code_grid_and_says_how_common_its_codes_are(vq):
    ex, client = vq
    z = grid_list(ex, 7)
    got = client.post("/api/decode", json={"z": z}).json()
    assert set(got) == {"image", "xy", "usage"}
    assert np.abs(png_of(got["image"]).astype(int) - decoded_png(ex, z)).max() <= 1
    vectors = ex.model.code_vectors(torch.tensor(z).view(1, 8, 8)).flatten(1)
    assert got["xy"] == pytest.approx(((vectors - ex.center) @ ex.directions.T)[0].tolist(),
                                      abs=1e-4)  # fmt: skip
    assert got["usage"] == pytest.approx(usage_of(ex, z), abs=1e-5)
    assert min(got["usage"]) >= 1 / 24  # image 7's own grid is one of the 24
    edited = list(z)
    edited[27] = (z[27] + 1) % 16
    other = client.post("/api/decode", json={"z": edited}).json()
    assert other["image"] != got["image"]
    assert np.abs(png_of(other["image"]).astype(int) - decoded_png(ex, edited)).max() <= 1
    assert other["usage"] == pytest.approx(usage_of(ex, edited), abs=1e-5)
    whole_numbers = client.post("/api/decode", json={"z": [float(v) for v in z]})
    assert whole_numbers.json()["image"] == got["image"]  # 3.0 is the integer 3 in JSON


BAD_GRIDS = {
    "short": [0] * 63,
    "long": [0] * 65,
    "past the codebook": [16] + [0] * 63,
    "negative": [-1] + [0] * 63,
    "huge": [10**30] + [0] * 63,
    "fraction": [0.5] + [0] * 63,
    "string": ["1"] + [0] * 63,
    "boolean": [True] + [0] * 63,
    "null": [None] + [0] * 63,
    "rows": [[0] * 8] * 8,
    "numbers": 5,
}


@pytest.mark.parametrize("name", BAD_GRIDS)
def test_a_discrete_model_refuses_a_bad_code_grid(vq, name):
    r = vq[1].post("/api/decode", json={"z": BAD_GRIDS[name]})
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], str) and r.json()["detail"]


def test_a_discrete_model_refuses_non_finite_codes_and_gaussian_requests(vq):
    client = vq[1]
    json_type = {"Content-Type": "application/json"}
    for word in ("NaN", "Infinity", "1e400"):
        body = ('{"z": [' + word + ", 0" * 63 + "]}").encode()
        assert client.post("/api/decode", content=body, headers=json_type).status_code == 422
    r = client.post("/api/decode", json={"z": [0.0, 0.0, 0.0]})  # a Gaussian code
    assert r.status_code == 422 and "at least 64 items" in r.json()["detail"]
    r = client.post("/api/decode", json={"z": [0] * 64, "extra": 1})
    assert r.status_code == 422
    r = client.post("/api/interpolate", json={"a": [0] * 64, "b": [1] * 64, "method": "slerp"})
    assert r.status_code == 422 and "method: Input should be 'linear'" in r.json()["detail"]
    r = client.post("/api/interpolate", json={"a": [0] * 64, "b": [99] * 64})
    assert r.status_code == 422 and "b.0" in r.json()["detail"]


def test_a_map_point_of_a_discrete_model_decodes_its_quantized_encoder_output(vq):
    ex, client = vq
    point = [0.03, -0.02]
    got = client.post("/api/map/decode", json={"xy": point}).json()
    z_e = explore.from_map(ex.center, ex.directions, torch.tensor([point])).view(1, 3, 8, 8)
    want = ex.model.quantize(z_e)
    assert got["z"] == want.flatten().tolist()
    same = client.post("/api/decode", json={"z": got["z"]}).json()
    assert same["image"] == got["image"] and same["xy"] == got["xy"]
    assert got["usage"] == same["usage"]
    # far along the first direction, the quantized grid differs from the one near the centre
    far = client.post("/api/map/decode", json={"xy": [float(ex.xy[:, 0].max()) * 3, 0]}).json()
    assert far["z"] != got["z"]


def test_the_map_of_a_discrete_model_is_its_encoder_outputs_plane(vq):
    ex, client = vq
    data = client.get("/api/map").json()
    z_e = explore.encode_codes(ex.model, ex.images).z_e.flatten(1)
    center, directions, _ = explore.pca_basis(z_e)
    want = (z_e - center) @ directions.T
    assert np.allclose(np.stack([data["x"], data["y"]], 1), want.numpy(), atol=1e-4)


def test_random_grids_come_from_the_seed_uniformly_or_from_a_fitted_transformer(vq, monkeypatch):
    from torch_vae.priors import fit_prior

    ex, client = vq
    a = client.post("/api/sample", json={"seed": 7}).json()
    assert a == client.post("/api/sample", json={"seed": 7}).json()
    uniform = ex.model.prior_sample(1, torch.Generator().manual_seed(7))
    assert a["z"] == uniform.flatten().tolist() and a["label"] is None
    assert np.abs(png_of(a["image"]).astype(int) - decoded_png(ex, a["z"])).max() <= 1
    options = {"hidden": 32, "layers": 1, "batch": 8, "steps": 5, "seed": 0}
    prior = fit_prior(ex.grids.numpy(), "transformer", options,
                      {"codebook_size": 16, "latent_dims": 3}, progress=False)  # fmt: skip
    monkeypatch.setattr(ex, "sampler", prior)
    got = client.post("/api/sample", json={"seed": 3}).json()
    assert got["z"] == prior.sample(1, torch.Generator().manual_seed(3)).flatten().tolist()
    assert got["usage"] == pytest.approx(usage_of(ex, got["z"]), abs=1e-5)
    with TestClient(create_app(ex)) as fitted:
        info = fitted.get("/api/info").json()
    assert info["fitted_sampler"] is True and "causal transformer over 8x8" in info["sampler"]


def test_the_explorer_takes_a_discrete_model_s_prior_only_where_it_fits(monkeypatch, tmp_path,
                                                                       caplog):  # fmt: skip
    import types

    from torch_vae.explorer import state

    grids = types.SimpleNamespace(dims=3, latent_kind="discrete", grid=(8, 8))
    means = types.SimpleNamespace(dims=3)  # a prior over Gaussian codes
    for found, grid, expected in [(grids, (8, 8), grids), (grids, (7, 7), None),
                                  (means, (8, 8), None), (grids, None, None)]:  # fmt: skip
        monkeypatch.setattr(state, "load_sampler", lambda path, f=found: f)
        assert find_sampler(tmp_path, 3, grid) is expected
    assert "draws (8, 8) code grids, the model's are (7, 7)" in caplog.text


def test_a_discrete_model_s_test_images_and_uploads_come_with_their_code_grids(vq):
    ex, client = vq
    got = client.get("/api/images/5").json()
    assert got["index"] == 5 and got["label"] == 5 and got["z"] == grid_list(ex, 5)
    assert (png_of(got["input"]) == ex.images[5][..., 0]).all()
    assert np.abs(png_of(got["image"]).astype(int) - decoded_png(ex, got["z"])).max() <= 1
    assert got["xy"] == client.post("/api/decode", json={"z": got["z"]}).json()["xy"]
    assert got["usage"] == pytest.approx(usage_of(ex, got["z"]), abs=1e-5)
    data = file_bytes(Image.fromarray(ex.images[13][..., 0]))
    up = client.post("/api/encode", files={"file": ("a.png", data)})
    assert up.status_code == 200, up.text
    assert up.json()["z"] == grid_list(ex, 13)
    assert up.json()["image"] == client.get("/api/images/13").json()["image"]
    bigger = file_bytes(Image.fromarray(ex.images[13][..., 0]).resize((64, 64)), "JPEG")
    up = client.post("/api/encode", files={"file": ("a.jpg", bigger)}).json()
    assert len(up["z"]) == 64 and all(0 <= v < 16 for v in up["z"])


def test_a_discrete_model_interpolates_between_code_vectors(vq):
    ex, client = vq
    a, b = grid_list(ex, 3), grid_list(ex, 9)
    assert a != b
    got = client.post("/api/interpolate", json={"a": a, "b": b, "steps": 5}).json()
    assert len(got["frames"]) == len(got["z"]) == len(got["xy"]) == 5
    assert got["z"][0] == a and got["z"][-1] == b  # each frame's vectors, quantized
    assert all(len(z) == 64 and all(0 <= v < 16 for v in z) for z in got["z"])
    ends = [client.post("/api/decode", json={"z": z}).json() for z in (a, b)]
    assert [got["frames"][0], got["frames"][-1]] == [e["image"] for e in ends]
    assert got["xy"][0] == pytest.approx(ends[0]["xy"], abs=1e-5)
    va, vb = ex.model.code_vectors(torch.tensor([a, b]).view(2, 8, 8))
    middle = (va + vb)[None] / 2  # the continuous frame, not its quantized grid
    assert got["frames"][2] == ex.decode(middle)[0]
    assert got["z"][2] == ex.model.quantize(middle).flatten().tolist()
    # the path is the straight line between the ends' places on the map
    xy = np.array(got["xy"])
    assert np.allclose(xy[2], (xy[0] + xy[-1]) / 2, atol=1e-4)


@pytest.fixture(scope="module")
def vq_conditional():
    ex = tiny_explorer(discrete=True, conditional=True)
    with TestClient(create_app(ex)) as c:
        yield ex, c


def test_a_conditional_discrete_model_decodes_and_encodes_as_the_class_named(vq_conditional):
    ex, client = vq_conditional
    z = grid_list(ex, 13)  # a 3, encoded as class 3
    assert client.get("/api/images/13").json()["z"] == z
    assert ex.encode(ex.images[13:14], 3).flatten().tolist() == z
    three = client.post("/api/decode", json={"z": z, "class": 3}).json()
    seven = client.post("/api/decode", json={"z": z, "class": "7"}).json()
    assert three["image"] == ex.decode(torch.tensor(z).view(1, 8, 8), 3)[0]
    assert seven["image"] != three["image"] and seven["usage"] == three["usage"]
    r = client.post("/api/decode", json={"z": z})
    assert r.status_code == 422 and "class: Field required" in r.json()["detail"]
    sample = client.post("/api/sample", json={"seed": 2, "class": 5}).json()
    assert sample["label"] == 5
    assert sample["image"] == ex.decode(torch.tensor(sample["z"]).view(1, 8, 8), 5)[0]
    data = file_bytes(Image.fromarray(ex.images[13][..., 0]))
    up = client.post("/api/encode", files={"file": ("a.png", data)}, data={"class": "4"}).json()
    assert up["z"] == ex.encode(ex.images[13:14], 4).flatten().tolist()
    path = client.post("/api/interpolate", json={"a": z, "b": grid_list(ex, 2), "steps": 3,
                                                 "class": 2}).json()  # fmt: skip
    assert path["frames"][0] == ex.decode(torch.tensor(z).view(1, 8, 8), 2)[0]


def test_a_slow_random_sample_does_not_hold_up_a_decode(monkeypatch):
    """A fitted transformer's draw takes about half a second: it runs beside the event loop,
    so another request (another tab's slider) is answered meanwhile."""
    import asyncio
    import time

    import httpx

    ex = tiny_explorer(latent_dims=3)
    real = ex.sample

    def slow(seed, label=None):
        time.sleep(1.0)  # as long as a transformer's draw, or longer
        return real(seed, label)

    monkeypatch.setattr(ex, "sample", slow)

    async def both():
        transport = httpx.ASGITransport(app=create_app(ex))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            done, start = {}, time.perf_counter()

            async def timed(name, path, body):  # when it was answered, from the start
                r = await c.post(path, json=body, headers={"host": "127.0.0.1"})
                assert r.status_code == 200, r.text
                done[name] = time.perf_counter() - start

            sample = asyncio.create_task(timed("sample", "/api/sample", {"seed": 1}))
            await asyncio.sleep(0.05)  # the sample is under way
            await timed("decode", "/api/decode", {"z": [0.0, 0.0, 0.0]})
            await sample
            return done

    done = asyncio.run(both())
    assert done["decode"] < 0.5 < done["sample"], done

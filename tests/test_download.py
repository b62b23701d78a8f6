"""Downloads against a local HTTP server on 127.0.0.1: good file, bad checksum, server down."""

import functools
import hashlib
import http.server
import socket
import threading

import numpy as np
import pytest

import fakedata
from torch_vae import TorchVaeError
from torch_vae.data import load_split
from torch_vae.data.download import MIRROR_ENV, download


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_good_file_is_downloaded_to_its_destination(server, tmp_path):
    root, url = server
    (root / "a.bin").write_bytes(b"hello world" * 100)
    md5 = hashlib.md5(b"hello world" * 100).hexdigest()
    dest = tmp_path / "dl" / "a.bin"
    assert download(f"{url}/a.bin", md5, dest, progress=False) == dest
    assert dest.read_bytes() == b"hello world" * 100


def test_bad_checksum_leaves_no_file(server, tmp_path):
    root, url = server
    (root / "a.bin").write_bytes(b"tampered")
    dest = tmp_path / "dl" / "a.bin"
    with pytest.raises(TorchVaeError, match="checksum mismatch"):
        download(f"{url}/a.bin", "0" * 32, dest, progress=False)
    assert not dest.exists()
    assert not dest.parent.exists()  # no partial download, nor the empty folder made for it
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(TorchVaeError, match="checksum mismatch"):
        download(f"{url}/a.bin", "0" * 32, kept / "a.bin", progress=False)
    assert kept.is_dir() and list(kept.iterdir()) == []  # a folder there before stays


def test_server_down_says_to_check_the_network(tmp_path):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TorchVaeError) as failed:
        download(f"http://127.0.0.1:{port}/a.bin", "0" * 32, tmp_path / "a.bin", progress=False)
    said = str(failed.value)
    assert said.startswith(f"could not download http://127.0.0.1:{port}/a.bin (no connection to "
                           "the server: ConnectionError); try again; if it keeps failing, check "
                           "your network, or download the file by hand into ")  # fmt: skip
    assert said.endswith("or set TORCH_VAE_MIRROR to a base URL that serves it")


def test_a_download_failing_from_the_mirror_names_the_mirror_once(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TORCH_VAE_MIRROR", f"http://127.0.0.1:{port}")
    with pytest.raises(TorchVaeError) as failed:
        download("https://example.org/a.bin", "0" * 32, tmp_path / "a.bin", progress=False)
    said = str(failed.value)
    assert "check that the mirror (TORCH_VAE_MIRROR) serves the file by its name" in said
    assert "set TORCH_VAE_MIRROR" not in said  # it is set


@pytest.fixture
def flaky(tmp_path):
    """A server whose first ``fail[0]`` answers are HTTP ``status[0]``, then the file; the
    requests it got are counted in ``asked``."""
    body = b"hello world" * 100
    state = {"fail": 0, "status": 503, "asked": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            state["asked"] += 1
            if state["asked"] <= state["fail"]:
                self.send_error(state["status"])
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a, **k):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield state, f"http://127.0.0.1:{httpd.server_address[1]}/a.bin", hashlib.md5(body).hexdigest()
    httpd.shutdown()
    httpd.server_close()


def test_a_failure_that_may_pass_is_tried_again_and_a_missing_file_is_not(flaky, tmp_path, caplog):
    state, url, md5 = flaky
    state["fail"] = 2  # two server errors, then the file
    with caplog.at_level("WARNING"):
        assert download(url, md5, tmp_path / "a.bin", progress=False).is_file()
    assert state["asked"] == 3
    assert "(HTTP 503); trying again in 0 s (1 of 2 more tries)" in caplog.text
    state.update(asked=0, fail=5)  # down for longer than the tries
    with pytest.raises(TorchVaeError, match=r"\(HTTP 503\); try again"):
        download(url, md5, tmp_path / "b.bin", progress=False)
    assert state["asked"] == 3 and not (tmp_path / "b.bin").exists()
    state.update(asked=0, fail=5, status=404)  # a missing file stays missing: asked once
    with pytest.raises(TorchVaeError, match=r"\(HTTP 404\)"):
        download(url, md5, tmp_path / "c.bin", progress=False)
    assert state["asked"] == 1


def test_file_missing_on_server_is_a_download_error(server, tmp_path):
    _, url = server
    with pytest.raises(
        TorchVaeError, match=r"could not download .*/nothing\.bin \(HTTP 404\)"
    ) as e:
        download(f"{url}/nothing.bin", "0" * 32, tmp_path / "a.bin", progress=False)
    assert "try again" not in str(e.value)  # a missing file stays missing


def test_dataset_downloaded_through_mirror(server, tmp_path, monkeypatch, register_md5s):
    """load_split fetches a missing dataset from its URL (here a mirror), checks it, reads it."""
    from torch_vae.data import datasets

    root, url = server
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {})
    data = fakedata.write_mnist(root)
    register_md5s("mnist", root)
    monkeypatch.setenv(MIRROR_ENV, url)
    arr = load_split("mnist", "test", 28, tmp_path / "data", progress=False)
    assert np.array_equal(arr[..., 0], data["t10k"])
    assert (tmp_path / "data" / "mnist" / "t10k-images-idx3-ubyte.gz").exists()


def test_dataset_with_official_checksum_rejects_other_file(server, tmp_path, monkeypatch):
    from torch_vae.data import datasets

    root, url = server
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {})
    fakedata.write_mnist(root)  # not the official files
    monkeypatch.setenv(MIRROR_ENV, url)
    with pytest.raises(
        TorchVaeError,
        match="checksum mismatch.*f68b3c2dcbeaaa9fbdd348bbdeb94873"
        ".*the mirror .TORCH_VAE_MIRROR. sent another file than the official one",
    ):
        load_split("mnist", "train", 28, tmp_path / "data", progress=False)
    assert not (tmp_path / "data").exists()  # a failed download leaves no empty folders
    # the way on: the official files (by hand too), or the images as a folder of one's own
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    name = "train-images-idx3-ubyte.gz"
    (tmp_path / "data" / "mnist" / name).write_bytes((root / name).read_bytes())
    with pytest.raises(TorchVaeError, match="does not match the official checksum .*not the "
                       "official file; delete it .*, or put the official file there .to train on "
                       "images of your own: --dataset folder:PATH.$"):  # fmt: skip
        load_split("mnist", "train", 28, tmp_path / "data", progress=False)


def test_a_dataset_folder_that_is_a_file_is_named_as_such(tmp_path, monkeypatch):
    from torch_vae.data import datasets

    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mnist").write_text("x")
    with pytest.raises(TorchVaeError, match=f"^{tmp_path / 'data' / 'mnist'} is a file, not a "
                       "folder: the mnist files go there; move the file away or choose another "
                       "--data_dir$"):  # fmt: skip
        load_split("mnist", "train", 28, tmp_path / "data", progress=False)


def test_a_file_missing_on_the_mirror_names_its_layout(server, tmp_path, monkeypatch):
    _, url = server
    monkeypatch.setenv(MIRROR_ENV, url + "/sub")
    with pytest.raises(
        TorchVaeError,
        match=r"\(HTTP 404\); check that the mirror .* serves the "
        "file by its name at BASE/NAME",
    ):
        download("https://example.org/x/a.bin", "0" * 32, tmp_path / "a.bin", progress=False)

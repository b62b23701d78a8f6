"""The dataset cache and loaders under change and damage: a folder's images change, 16-bit and
float images, a cache file whose header lies, temporaries left by a killed build, downloads that
cannot reach the server."""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

import fakedata
from torch_vae import TorchVaeError
from torch_vae.data import load_split
from torch_vae.data.datasets import _decode_path, get_dataset
from torch_vae.data.download import MIRROR_ENV
from torch_vae.data.labels import class_names


def _fresh(folder, split, size, tmp_path):
    """The split decoded from scratch, into a data dir of its own."""
    data_dir = tmp_path / f"fresh-{time.monotonic_ns()}"
    return load_split(f"folder:{folder}", split, size, data_dir, progress=False)


# 1. a folder's cache follows its content


def test_folder_cache_is_rebuilt_when_images_change_are_added_or_removed(tmp_path):
    folder = fakedata.write_folder(tmp_path / "imgs", n=20)
    data_dir = tmp_path / "data"

    def load(split="train"):
        return load_split(f"folder:{folder}", split, 16, data_dir, progress=False)

    first = load()
    assert np.array_equal(load(), first)  # unchanged: the cache is used
    # replace one image by another of the same size (and the same mtime second)
    victim = folder / "img001.png"
    st = victim.stat()
    Image.fromarray(255 - np.asarray(Image.open(victim))).save(victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    changed = load()
    assert not np.array_equal(changed, first)
    assert np.array_equal(changed, _fresh(folder, "train", 16, tmp_path))
    # add images: more of them, and every tenth image moves to the test split
    fakedata.write_folder(tmp_path / "more", n=5, seed=50)
    for p in (tmp_path / "more").iterdir():
        p.rename(folder / f"zz-{p.name}")
    assert load().shape[0] == 23 and load("test").shape[0] == 2
    assert np.array_equal(load("test"), _fresh(folder, "test", 16, tmp_path))
    # remove some
    for p in sorted(folder.iterdir())[:6]:
        p.unlink()
    assert load().shape[0] == 18 and np.array_equal(load(), _fresh(folder, "train", 16, tmp_path))


def test_unchanged_folder_is_not_decoded_again(tmp_path, monkeypatch):
    from torch_vae.data import datasets

    folder = fakedata.write_folder(tmp_path / "imgs", n=20)
    load_split(f"folder:{folder}", "train", 16, tmp_path / "data", progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again although nothing changed")

    monkeypatch.setattr(datasets.FolderDataset, "prepare", refuse)
    assert load_split(f"folder:{folder}", "train", 16, tmp_path / "data", False).shape[0] == 18


# 2. every image mode lands on the 8-bit scale, or is refused by name


def _gradient(size=40) -> np.ndarray:
    """8-bit grey levels covering 0..255, with some structure."""
    yy, xx = np.mgrid[:size, :size]
    return ((xx * 255 // (size - 1) + yy * 7) % 256).astype(np.uint8)


def _twins(tmp_path) -> dict[str, object]:
    """One 8-bit image and its twins in every high-depth mode Pillow opens."""
    v = _gradient()
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = {"L": tmp_path / "twin8.png"}
    Image.fromarray(v).save(paths["L"])
    paths["I;16"] = tmp_path / "twin16.png"
    Image.fromarray(v.astype(np.uint16) * 257).save(paths["I;16"])
    paths["I;16B"] = tmp_path / "twin16b.tif"
    Image.frombytes("I;16B", v.shape[::-1], (v.astype(">u2") * 257).tobytes()).save(paths["I;16B"])
    paths["I"] = tmp_path / "twin32.tif"
    Image.fromarray(v.astype(np.int32) * 257).save(paths["I"])
    paths["F"] = tmp_path / "twinf.tif"
    Image.fromarray(v.astype(np.float32) / 255).save(paths["F"])
    for mode, path in paths.items():
        with Image.open(path) as img:
            assert img.mode == mode, (path, img.mode)
    return paths


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [40, 16])
def test_16bit_and_float_images_match_their_8bit_twin(tmp_path, channels, size):
    paths = _twins(tmp_path)
    want = _decode_path(None, paths["L"], channels, size).astype(int)
    for mode, path in paths.items():
        got = _decode_path(None, path, channels, size).astype(int)
        assert np.abs(got - want).max() <= 1, mode
    # a float copy of the 8-bit values themselves (what Pillow's convert("F") gives) is kept
    Image.fromarray(_gradient().astype(np.float32)).save(tmp_path / "f255.tif")
    got = _decode_path(None, tmp_path / "f255.tif", channels, size).astype(int)
    assert np.abs(got - want).max() <= 1


def test_folder_of_16bit_and_float_images_is_grayscale_on_the_8bit_scale(tmp_path):
    folder = tmp_path / "deep"
    for i in range(3):
        _twins(folder / "train" / f"set{i}")
    _twins(folder / "test")
    ds = get_dataset(f"folder:{folder}")
    assert ds.channels == 1
    arr = load_split(f"folder:{folder}", "train", 16, tmp_path / "data", progress=False)
    assert arr.shape == (15, 16, 16, 1) and 60 < arr.mean() < 200  # not clipped to white/black
    # each set's five twins are the same picture
    per_set = arr.reshape(3, 5, 16, 16).astype(int)
    assert (per_set.max(axis=1) - per_set.min(axis=1)).max() <= 1


@pytest.mark.parametrize(
    "mode,values",
    [
        ("F", np.array([[-3.0, 0.5], [2.0, 300.0]], np.float32)),
        ("F", np.array([[0.0, np.nan], [0.5, 1.0]], np.float32)),
        ("I", np.array([[0, 70000], [5, -1]], np.int32)),
    ],
    ids=["float-out-of-range", "float-nan", "int32-beyond-16bit"],
)
def test_image_without_an_8bit_scale_is_refused_by_name_and_mode(tmp_path, mode, values):
    path = tmp_path / "odd.tif"
    Image.fromarray(np.tile(values, (8, 8))).save(path)
    with Image.open(path) as img:
        assert img.mode == mode
    with pytest.raises(TorchVaeError) as info:
        _decode_path(None, path, 1, 8)
    message = str(info.value)
    assert "odd.tif" in message and f"mode {mode}" in message and "\n" not in message


# 3. a cache file whose header does not match its record is rebuilt


def _rewrite_header(npy, **changes):
    from numpy.lib import format as npformat

    with open(npy, "rb") as f:
        npformat.read_magic(f)
        shape, fortran, dtype = npformat.read_array_header_1_0(f)
        body = f.read()
    header = {"shape": shape, "fortran_order": fortran, "descr": npformat.dtype_to_descr(dtype)}
    header.update(changes)
    with open(npy, "wb") as f:
        npformat.write_array_header_1_0(f, header)
        f.write(body)


@pytest.mark.parametrize(
    "changes",
    [
        {"shape": (2**20, 2**20, 32, 1)},  # 32 TiB: numpy cannot even allocate it
        {"shape": (2**31, 32, 32, 1)},
        {"shape": (10, 32, 32, 2)},  # the same byte count, another shape
        {"descr": "<u2", "shape": (10, 32, 32, 1)},
        {"fortran_order": True},
    ],
    ids=["huge", "large", "same-size", "dtype", "fortran"],
)
def test_cache_whose_header_lies_is_rebuilt(mnist_dir, caplog, changes):
    first = load_split("mnist", "test", 32, mnist_dir, progress=False)
    npy = mnist_dir / "cache" / "mnist-test-32.npy"
    _rewrite_header(npy, **changes)
    with caplog.at_level(logging.INFO, logger="torch_vae"):
        assert np.array_equal(load_split("mnist", "test", 32, mnist_dir, progress=False), first)
    rebuilt = [r for r in caplog.records if "rebuilding" in r.getMessage()]
    assert len(rebuilt) == 1 and str(npy) in rebuilt[0].getMessage()
    assert np.array_equal(np.load(npy), first)  # repaired on disk


def test_cache_record_that_is_not_json_or_huge_is_rebuilt(mnist_dir):
    first = load_split("mnist", "test", 32, mnist_dir, progress=False)
    meta = mnist_dir / "cache" / "mnist-test-32.json"
    for junk in (b"\xff\xfe not json", b"[" * 100000, b" " * (2 << 20) + b"{}"):
        meta.write_bytes(junk)
        assert np.array_equal(load_split("mnist", "test", 32, mnist_dir, progress=False), first)
        assert json.loads(meta.read_text())["shape"] == [20, 32, 32, 1]


# 4. temporaries of a killed cache build are swept; those of a live build are kept

_WRITER = """
import sys, time
from pathlib import Path
if sys.argv[2] == "locked":  # as the cache is written now
    from torch_vae.data.download import locked_atomic_file as writer
    opener = lambda f: f
else:  # as it was before temporaries were locked
    from torch_vae.io.files import atomic_path as writer
    opener = lambda tmp: open(tmp, "wb")
with writer(Path(sys.argv[1])) as tmp, opener(tmp) as f:
    f.write(b"x" * 100000)
    f.flush()
    print("writing", flush=True)
    time.sleep(600)
"""


def _start_writer(target, how="locked"):
    """A process writing ``target`` through a temporary beside it, stopped half-way."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(target), how], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "writing"
    return proc


def _temporaries(folder):
    return sorted(p.name for p in folder.glob(".*.tmp"))


@pytest.mark.slow  # kills cache builds, 9 s
def test_temporaries_of_killed_cache_builds_are_swept_live_ones_kept(mnist_dir, tmp_path):
    cache = mnist_dir / "cache"
    cache.mkdir()
    killed = [_start_writer(cache / "mnist-train-64.npy", how) for how in ("plain", "locked")]
    live = _start_writer(cache / "cifar-10-train-64.npy")  # another cache, being built now
    try:
        for proc in killed:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        # a temporary of an older build that took no lock, and a file that is not one
        old = cache / ".mnist-test-16.npy.abcd1234.tmp"
        old.write_bytes(b"y" * 1000)
        (cache / "notes.tmp").write_text("mine")
        assert len(_temporaries(cache)) == 4
        load_split("mnist", "test", 32, mnist_dir, progress=False)
        left = _temporaries(cache)
        assert len(left) == 1 and left[0].startswith(".cifar-10-train-64.npy.")
        assert (cache / "notes.tmp").exists()
    finally:
        live.kill()
        live.wait()
    load_split("mnist", "test", 32, mnist_dir, progress=False)
    assert _temporaries(cache) == []
    assert not (cache / "cifar-10-train-64.npy").exists() and (cache / "notes.tmp").exists()


def test_without_locks_only_long_untouched_temporaries_are_swept(tmp_path, monkeypatch):
    from torch_vae.io import files as dl

    monkeypatch.setattr(dl, "fcntl", None)  # a system or file system without flock
    fresh, old = tmp_path / ".a.npy.abcd1234.tmp", tmp_path / ".b.npy.efgh5678.tmp"
    for path in (fresh, old):
        path.write_bytes(b"z")
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    assert dl.remove_stale_temporaries(tmp_path) == 1
    assert fresh.exists() and not old.exists()


def test_locked_write_is_atomic_and_cleans_up_on_error(tmp_path):
    from torch_vae.data.download import locked_atomic_file

    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with locked_atomic_file(target) as f:
            f.write(b"half")
            raise RuntimeError
    assert target.read_bytes() == b"old" and _temporaries(tmp_path) == []
    with locked_atomic_file(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new" and _temporaries(tmp_path) == []
    assert (target.stat().st_mode & 0o777) == (0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# 5. a dataset that cannot be downloaded: every missing file in one line, and one log line


@pytest.fixture
def dead_url():
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("mirror", ["notaurl", "/srv/mirror", "file:///srv/mirror"])
def test_a_mirror_that_is_not_an_http_url_is_told_as_such(tmp_path, monkeypatch, mirror):
    from torch_vae.data import datasets

    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {})
    monkeypatch.setenv(MIRROR_ENV, mirror)
    with pytest.raises(TorchVaeError) as info:
        load_split("mnist", "test", 32, tmp_path, progress=False)
    assert str(info.value).startswith(f"{MIRROR_ENV}={mirror!r} is not an http(s) URL; set it")
    assert not (tmp_path / "mnist").exists()


def test_offline_error_names_every_missing_file_the_folder_and_the_mirror(
    tmp_path, monkeypatch, dead_url, mnist_dir
):
    from torch_vae.data import datasets

    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {})
    monkeypatch.setenv(MIRROR_ENV, dead_url)
    with pytest.raises(TorchVaeError) as info:
        load_split("celeb-a", "test", 32, tmp_path, progress=False)
    message = str(info.value)
    assert "\n" not in message
    for part in ("img_align_celeba.zip", "list_eval_partition.txt", MIRROR_ENV):
        assert part in message
    assert str(tmp_path / "celeb-a") in message
    # a file already there is not named; a split is read without the other split's file
    (mnist_dir / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(TorchVaeError) as info:
        load_split("mnist", "test", 28, mnist_dir, progress=False)
    assert "t10k-images-idx3-ubyte.gz" in str(info.value) and MIRROR_ENV in str(info.value)
    assert "train-images-idx3-ubyte.gz" not in str(info.value)
    assert len(load_split("mnist", "train", 28, mnist_dir, progress=False)) > 0


_DOWNLOAD = """
import logging, sys
from pathlib import Path
from torch_vae.data.download import download
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)  # as the CLI
download(sys.argv[1], sys.argv[2], Path(sys.argv[3]), progress=False)
"""


@pytest.mark.slow  # a subprocess and an HTTP server, 4 s
def test_download_is_announced_once(tmp_path):
    import functools
    import hashlib
    import http.server
    import threading

    root = tmp_path / "served"
    root.mkdir()
    (root / "a.bin").write_bytes(b"data" * 100)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/a.bin"
        md5 = hashlib.md5(b"data" * 100).hexdigest()
        argv = [sys.executable, "-c", _DOWNLOAD, url, md5, str(tmp_path / "a.bin")]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "ownload" in line]
    assert len(lines) == 1 and "a.bin" in lines[0], done.stderr
    assert (tmp_path / "a.bin").read_bytes() == b"data" * 100


def test_folder_listing_keeps_the_sorted_path_order_of_the_splits(tmp_path):
    """The one-pass scan must split a folder exactly as sorted(Path.rglob) did, or existing
    users' train and test images would swap."""
    folder = tmp_path / "imgs"
    names = ["a.png", "a-b.png", "a.b.png", "a/b.png", "a/c/d.JPG", "a-b/x.png", "B.png", "_.png"]
    names += [f"s{i}/n{j}.png" for i in (1, 10, 2) for j in range(4)] + [".hidden.png", "x.txt"]
    for n in names:
        (folder / n).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / n, format="PNG")
    (folder / "dir.png").mkdir()
    (folder / "link.png").symlink_to(folder / "a.png")
    (folder / "dangling.png").symlink_to(folder / "nothing.png")
    (folder / "linked").symlink_to(folder / "a", target_is_directory=True)  # inside: not entered
    from torch_vae.data.datasets import IMAGE_SUFFIXES

    every = sorted(  # hidden files (.hidden.png) are left out since they are skipped
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )
    assert len(every) == 21
    ds = get_dataset(f"folder:{folder}")
    for split, want in (("train", every[:9] + every[10:19] + every[20:]), ("test", every[9::10])):
        assert ds.list_images(split) == want


def test_a_symlinked_class_folder_from_elsewhere_is_read_and_links_inside_or_up_are_not(
    tmp_path,
):
    """A class subfolder that is a symlink to a folder elsewhere was skipped without a word
    (the model trained on the other classes only); now its images are read under the link's
    name. Links to a folder inside the dataset (its images are there already) or to one that
    holds the dataset (a loop) are not entered."""
    folder, elsewhere = tmp_path / "imgs", tmp_path / "elsewhere" / "dogs"
    fakedata.write_folder(folder / "cats", n=12)
    fakedata.write_folder(elsewhere, n=8, seed=5)
    (folder / "dogs").symlink_to(elsewhere, target_is_directory=True)
    (folder / "cats-again").symlink_to(folder / "cats", target_is_directory=True)
    (folder / "cats" / "up").symlink_to(tmp_path, target_is_directory=True)
    ds = get_dataset(f"folder:{folder}")
    listed = [p for split in ("train", "test") for p in ds.list_images(split)]
    assert len(listed) == 20
    assert sum(p.parent == folder / "dogs" for p in listed) == 8
    assert class_names(f"folder:{folder}") == ["cats", "dogs"]


def test_a_cache_of_copies_no_checksum_covers_follows_their_changes(mnist_dir, tmp_path):
    """An uncompressed IDX file and an extracted CIFAR folder are not checked by MD5: their
    caches are rebuilt when they change (they were kept, with the old pixels)."""
    import gzip

    raw = mnist_dir / "mnist" / "t10k-images-idx3-ubyte"
    raw.write_bytes(gzip.decompress(raw.with_suffix(".gz").read_bytes()))
    raw.with_suffix(".gz").unlink()
    first = load_split("mnist", "test", 16, mnist_dir, progress=False)
    data = bytearray(raw.read_bytes())
    data[16 : 16 + 28 * 28] = bytes(255 - b for b in data[16 : 16 + 28 * 28])  # image 0 inverted
    raw.write_bytes(bytes(data))
    changed = load_split("mnist", "test", 16, mnist_dir, progress=False)
    assert not np.array_equal(changed[0], first[0]) and np.array_equal(changed[1:], first[1:])

    data_dir = tmp_path / "cifar"
    archive = fakedata.write_cifar(data_dir)
    with tarfile.open(archive) as tar:
        tar.extractall(data_dir, filter="data")
    archive.unlink()
    first = load_split("cifar-10", "test", 32, data_dir, progress=False)
    batch = data_dir / "cifar-10-batches-py" / "test_batch"
    fakedata.write_cifar(tmp_path / "other", seed=7)
    with tarfile.open(tmp_path / "other" / "cifar-10-python.tar.gz") as tar:
        batch.write_bytes(tar.extractfile("cifar-10-batches-py/test_batch").read())
    changed = load_split("cifar-10", "test", 32, data_dir, progress=False)
    assert not np.array_equal(changed, first)


def test_a_copy_of_the_systems_repacked_file_is_taken_as_it(mnist_dir, tmp_path, monkeypatch):
    """Debian's repacked Fashion-MNIST files copied into --data_dir were called corrupt (their
    MD5 is not the official one); a copy with the system file's bytes is read, and another
    file's error says where the system's copies are."""
    import gzip

    from torch_vae.data import datasets

    name = "t10k-images-idx3-ubyte.gz"
    ours = mnist_dir / "mnist" / name
    system = tmp_path / "usr-share"
    system.mkdir()
    repacked = gzip.compress(gzip.decompress(ours.read_bytes()), compresslevel=1, mtime=1)
    (system / name).write_bytes(repacked)
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {"mnist": [system]})
    first = load_split("mnist", "test", 16, mnist_dir, progress=False).copy()
    ours.write_bytes(repacked)  # the user copies the system's file into --data_dir
    shutil.rmtree(mnist_dir / "cache")
    assert np.array_equal(load_split("mnist", "test", 16, mnist_dir, progress=False), first)
    ours.write_bytes(gzip.compress(gzip.decompress(repacked), compresslevel=2, mtime=2))
    shutil.rmtree(mnist_dir / "cache")
    with pytest.raises(
        TorchVaeError,
        match=r"does not match the official checksum.*the "
        r"system's copies \(.*usr-share\) differ from the official files",
    ):
        load_split("mnist", "test", 16, mnist_dir, progress=False)


def test_a_damaged_file_of_an_extracted_cifar_folder_is_named(tmp_path):
    data_dir = tmp_path / "cifar"
    archive = fakedata.write_cifar(data_dir)
    with tarfile.open(archive) as tar:
        tar.extractall(data_dir, filter="data")
    archive.unlink()
    folder = data_dir / "cifar-10-batches-py"
    (folder / "data_batch_3").write_bytes(b"garbage\n")
    with pytest.raises(TorchVaeError) as refused:
        load_split("cifar-10", "train", 32, data_dir, progress=False)
    said = str(refused.value)
    assert said.startswith(f"{folder / 'data_batch_3'} is not a valid CIFAR batch (")
    assert said.endswith(f"replace it with the official file, or delete {folder} to download "
                         "the dataset again")  # fmt: skip

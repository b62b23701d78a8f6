"""Property-based fuzzing (hypothesis) of every loader: a truncated, bit-flipped or random file
gives a clean one-line ``TorchVaeError`` (or, where the damage happens to leave a valid file, a
valid result), never another exception, a crash or a hang.

Each loader starts from a small valid file in its real format (built once per module) and gets
mutations drawn by hypothesis; the number of examples is kept small for CI, and a deadline per
example catches anything that would hang.
"""

import gzip
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fakedata
from torch_vae import VAE, ModelConfig, TorchVaeError, load_model, save_model
from torch_vae.data.datasets import _decode_path, read_celeba
from torch_vae.data.formats import read_celeba_partition, read_cifar, read_idx
from torch_vae.training.rundir import read_run_config
from torch_vae.training.state import load_train_state, save_train_state

FUZZ = settings(
    max_examples=25,
    deadline=5000,  # ms per example: far above the normal time, so only a hang trips it
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run: CI stays reproducible
)


@st.composite
def mutations(draw, original: bytes) -> bytes:
    """Truncate, flip bits, overwrite a stretch with random bytes, or replace it all."""
    kind = draw(st.sampled_from(["truncate", "flip", "splice", "random"]))
    data = bytearray(original)
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, max(len(data) - 1, 0)))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if kind == "splice":
        start = draw(st.integers(0, len(data) - 1))
        junk = draw(st.binary(min_size=1, max_size=64))
        data[start : start + len(junk)] = junk
        return bytes(data)
    return draw(st.binary(max_size=2048))


def fuzz_file(original: bytes, name: str, check) -> None:
    """Run ``check(path)`` on mutations of ``original`` written to ``name``; only
    TorchVaeError may escape it."""

    @FUZZ
    @given(mutations(original))
    def run(data: bytes) -> None:
        path = Path(name)
        path.write_bytes(data)
        try:
            check(path)
        except TorchVaeError as exc:
            message = str(exc)
            assert message and "\n" not in message.strip(), message

    run()


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("originals")
    out: dict[str, bytes] = {}
    mnist = root / "mnist"
    fakedata.write_mnist(mnist, n_train=6, n_test=3)
    out["idx.gz"] = (mnist / "t10k-images-idx3-ubyte.gz").read_bytes()
    out["idx"] = gzip.decompress(out["idx.gz"])
    out["cifar"] = fakedata.write_cifar(root / "cifar", per_batch=2).read_bytes()
    celeba = fakedata.write_celeba(root / "celeba", n=6)
    out["celeba.zip"] = (celeba / "img_align_celeba.zip").read_bytes()
    out["partition"] = (celeba / "list_eval_partition.txt").read_bytes()
    folder = fakedata.write_folder(root / "folder", n=2)
    out["png"] = next(folder.glob("*.png")).read_bytes()
    out["jpg"] = next(folder.glob("*.jpg")).read_bytes()
    model = VAE(ModelConfig(latent_dims=2, max_filters=8, image_size=16, depth=2))
    out["weights"] = save_model(model, root / "m.safetensors").read_bytes()
    run = root / "run"
    run.mkdir()
    opt = torch.optim.AdamW(model.parameters())
    save_train_state(run, model=model, opt=opt, gen=torch.Generator(), device=torch.device("cpu"),
                     epoch=1, step=5, n_train=10)  # fmt: skip
    out["state"] = (run / "ckpt.pt").read_bytes()
    cfg = {"model": model.config.to_dict(), "train": {"dataset": "mnist", "epochs": 2}}
    out["config"] = json.dumps(cfg).encode()
    return out


def test_fuzz_idx(originals, tmp_path):
    fuzz_file(originals["idx"], tmp_path / "images-idx3-ubyte", read_idx)
    fuzz_file(originals["idx.gz"], tmp_path / "images-idx3-ubyte.gz", read_idx)


def test_fuzz_cifar_archive(originals, tmp_path):
    members = [f"data_batch_{i}" for i in range(1, 6)]
    fuzz_file(originals["cifar"], tmp_path / "cifar-10-python.tar.gz",
              lambda p: read_cifar(p, members, b"labels"))  # fmt: skip


def test_fuzz_celeba_zip_and_partition_list(originals, tmp_path):
    good_zip = tmp_path / "good.zip"
    good_zip.write_bytes(originals["celeba.zip"])
    good_list = tmp_path / "good.txt"
    good_list.write_bytes(originals["partition"])

    def with_zip(path):
        read_celeba(path, good_list, 0, 8, "fuzz", progress=False)

    def with_list(path):
        read_celeba_partition(path)
        read_celeba(good_zip, path, 0, 8, "fuzz", progress=False)

    fuzz_file(originals["celeba.zip"], tmp_path / "img_align_celeba.zip", with_zip)
    fuzz_file(originals["partition"], tmp_path / "list_eval_partition.txt", with_list)


def test_fuzz_folder_images(originals, tmp_path):
    for kind in ("png", "jpg"):
        fuzz_file(originals[kind], tmp_path / f"image.{kind}",
                  lambda p: _decode_path(None, p, 3, 8))  # fmt: skip


def test_fuzz_weights(originals, tmp_path):
    fuzz_file(originals["weights"], tmp_path / "model.safetensors", load_model)


def test_fuzz_training_state(originals, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    fuzz_file(originals["state"], run / "ckpt.pt", lambda p: load_train_state(p.parent))


def test_fuzz_run_config(originals, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    fuzz_file(originals["config"], run / "config.json", lambda p: read_run_config(p.parent))


@FUZZ
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=12,
))  # fmt: skip
def test_fuzz_config_values(tmp_path_factory, value):
    """Structurally valid JSON with odd values in every place a config holds."""
    run = tmp_path_factory.mktemp("cfg")
    fields = ["latent_dims", "max_filters", "image_size", "depth", "arch", "in_channels"]
    for field in fields:
        model = {"latent_dims": 2, "max_filters": 8, "image_size": 16, "depth": 2, field: value}
        data = {"model": model, "train": {"dataset": "mnist", "epochs": value}}
        (run / "config.json").write_text(json.dumps(data))
        try:
            read_run_config(run)
        except TorchVaeError as exc:
            assert "\n" not in str(exc).strip()


def test_mutations_really_damage_the_files(originals):
    """The fuzzer is not vacuous: most mutated IDX files are rejected."""
    rejected = 0

    @FUZZ
    @given(mutations(originals["idx.gz"]))
    def run(data):
        nonlocal rejected
        try:
            read_idx_bytes(data)
        except TorchVaeError:
            rejected += 1

    run()
    assert rejected >= 10


def read_idx_bytes(data: bytes) -> np.ndarray:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x-idx3-ubyte.gz"
        path.write_bytes(data)
        return read_idx(path)


def png_bomb(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG of width x height: a few KB that decode to width * height
    pixels (Pillow holds one byte per pixel). The rows are compressed one at a time, so
    building it never holds the whole image."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = bytes(1 + (width + 7) // 8)  # filter type 0, then the packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_png_bomb_builder_writes_a_decodable_image():
    from PIL import Image

    with Image.open(io.BytesIO(png_bomb(67, 45))) as img:
        img.load()
        assert img.size == (67, 45) and img.mode == "1" and img.getextrema() == (0, 0)


# Pillow's guard: it warns above Image.MAX_IMAGE_PIXELS (the loaders turn the warning into an
# error) and raises DecompressionBombError above twice that.
BOMBS = {"over-the-limit": (10_000, 10_000), "over-twice-the-limit": (20_000, 20_000)}


@pytest.mark.parametrize("route", ["celeba-zip", "folder"])
@pytest.mark.parametrize("bomb", list(BOMBS), ids=list(BOMBS))
def test_decompression_bomb_is_refused_by_the_pixel_limit(tmp_path, bomb, route):
    """A small valid PNG declaring more pixels than Pillow's limit is refused before it is
    decoded, with Pillow's size message, whether it is a zip member or a file in a folder."""
    from PIL import Image

    from torch_vae.data.datasets import get_dataset

    width, height = BOMBS[bomb]
    assert width * height > Image.MAX_IMAGE_PIXELS
    data = png_bomb(width, height)
    assert len(data) < 100_000
    match = (
        rf"cannot read image \S*000001\.jpg.*\(Image size \({width * height} pixels\) exceeds "
        r"limit of \d+ pixels, could be decompression bomb"
    )
    if route == "celeba-zip":
        path = tmp_path / "img_align_celeba.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("img_align_celeba/000001.jpg", data)
        parts = tmp_path / "list_eval_partition.txt"
        parts.write_text("000001.jpg 0\n")
        with pytest.raises(TorchVaeError, match=match):
            read_celeba(path, parts, 0, 8, "bomb", progress=False)
    else:
        folder = fakedata.write_folder(tmp_path / "imgs", n=10)
        (folder / "000001.jpg").write_bytes(data)
        with pytest.raises(TorchVaeError, match=match):
            _decode_path(None, folder / "000001.jpg", 3, 8)
        with pytest.raises(TorchVaeError, match=match):
            get_dataset(f"folder:{folder}")  # the scan of every image's mode


@pytest.mark.parametrize("bomb", list(BOMBS), ids=list(BOMBS))
def test_a_decompression_bomb_given_as_one_image_is_refused_in_the_project_s_words(tmp_path, bomb):
    """interpolate --images and the explorer's upload say the limit, not Pillow's text."""
    from PIL import Image

    from torch_vae.cli.common import read_image
    from torch_vae.explorer.state import MAX_UPLOAD_PIXELS, UploadError, read_upload

    data = png_bomb(*BOMBS[bomb])
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    limit = f"more than {Image.MAX_IMAGE_PIXELS:,} pixels"
    with pytest.raises(TorchVaeError) as refused:
        read_image(path, 1, 32)
    assert str(refused.value) == (f"cannot read image {path}: it has {limit}, Pillow's limit "
                                  "against decompression bombs; pass a smaller image")  # fmt: skip
    with pytest.raises(UploadError) as refused:
        read_upload(data, 1, 32)
    assert refused.value.status == 413
    width, height = BOMBS[bomb]  # the upload's message says the image's own count
    assert str(refused.value) == (f"the image has {width * height:,} pixels; at most "
                                  f"{MAX_UPLOAD_PIXELS:,} in all")  # fmt: skip

"""The dataset cache is a memory-mapped file: written through the map, hashed once, shared."""

import errno
import json
import os
import warnings

import numpy as np
import pytest

from torch_vae.data import cache, load_split


def test_split_is_a_memory_map_of_the_cache_file(mnist_dir):
    built = load_split("mnist", "train", 32, mnist_dir, progress=False)
    again = load_split("mnist", "train", 32, mnist_dir, progress=False)
    npy = mnist_dir / "cache" / "mnist-train-32.npy"
    for arr in (built, again):
        assert isinstance(arr, np.memmap) and os.path.samefile(arr.filename, npy)
    assert np.array_equal(built, again) and again.shape == (40, 32, 32, 1)
    again[0] = 7  # copy-on-write: the caller may write; the file does not change
    assert not np.array_equal(load_split("mnist", "train", 32, mnist_dir, progress=False)[0], 7)


def test_split_is_decoded_into_the_file_not_into_memory(mnist_dir, monkeypatch):
    shapes = []
    real = cache._map_file

    def spy(f, shape):
        shapes.append(tuple(shape))
        return real(f, shape)

    monkeypatch.setattr(cache, "_map_file", spy)
    load_split("mnist", "test", 24, mnist_dir, progress=False)
    assert shapes == [(20, 24, 24, 1)]


def test_an_intact_cache_is_not_hashed_when_opened(mnist_dir, monkeypatch):
    first = load_split("mnist", "test", 32, mnist_dir, progress=False).copy()

    def no_hashing(*a, **k):
        raise AssertionError("hashed the whole cache at start-up")

    monkeypatch.setattr(cache, "_digest", no_hashing)
    assert np.array_equal(load_split("mnist", "test", 32, mnist_dir, progress=False), first)


def test_verify_on_demand_finds_damage_the_cheap_checks_cannot(mnist_dir, monkeypatch):
    first = load_split("mnist", "test", 32, mnist_dir, progress=False).copy()
    npy = mnist_dir / "cache" / "mnist-test-32.npy"
    st = npy.stat()
    raw = bytearray(npy.read_bytes())
    raw[-1] ^= 0xFF  # bit rot: same size, and the mtime is put back
    npy.write_bytes(bytes(raw))
    os.utime(npy, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (
        load_split("mnist", "test", 32, mnist_dir, progress=False)[-1, -1, -1, 0]
        != first[-1, -1, -1, 0]
    )  # the documented limit of the cheap checks
    monkeypatch.setenv(cache.VERIFY_ENV, "1")
    assert np.array_equal(load_split("mnist", "test", 32, mnist_dir, progress=False), first)


def test_a_record_of_the_first_format_is_checked_once_and_upgraded(mnist_dir):
    first = load_split("mnist", "test", 32, mnist_dir, progress=False).copy()
    record = mnist_dir / "cache" / "mnist-test-32.json"
    meta = json.loads(record.read_text())
    old = {k: v for k, v in meta.items() if k not in ("bytes", "mtime_ns")} | {"version": 1}
    record.write_text(json.dumps(old))
    assert np.array_equal(load_split("mnist", "test", 32, mnist_dir, progress=False), first)
    assert json.loads(record.read_text()) == meta


def test_a_read_only_cache_folder_builds_the_split_in_memory(mnist_dir, monkeypatch, caplog):
    from torch_vae.data import cache as cache_mod

    def read_only(path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(cache_mod, "locked_atomic_file", read_only)
    arr = load_split("mnist", "test", 32, mnist_dir, progress=False)
    assert arr.shape == (20, 32, 32, 1) and not isinstance(arr, np.memmap)
    assert "cannot write the dataset cache" in caplog.text and "TORCH_VAE_DATA" in caplog.text
    # another error than a folder refusing files is not hidden
    monkeypatch.setattr(cache_mod, "locked_atomic_file", lambda p: (_ for _ in ()).throw(
        OSError(errno.EIO, "Input/output error", str(p))))  # fmt: skip
    with pytest.raises(OSError, match="Input/output error"):
        load_split("mnist", "test", 32, mnist_dir, progress=False)


def test_full_disk_while_building_falls_back_to_memory(mnist_dir, monkeypatch, caplog):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    arr = load_split("mnist", "test", 32, mnist_dir, progress=False)
    assert arr.shape == (20, 32, 32, 1) and not isinstance(arr, np.memmap)
    assert "no room for the dataset cache" in caplog.text
    assert not list((mnist_dir / "cache").glob("*.npy")) + list(
        (mnist_dir / "cache").glob(".*.tmp")
    )


class BigFake:
    """A registered-dataset stand-in whose split is 2,000 RGB images at 128x128 (98 MB)."""

    name, channels, files = "bigfake", 3, ()

    def cache_key(self, split, size):
        return f"bigfake-{split}-{size}"

    def fingerprint(self, split, data_dir=None):
        return None

    def prepare(self, split, size, data_dir, progress=True, allocate=None):
        out = allocate((2000, size, size, 3))
        for i in range(0, 2000, 100):
            out[i : i + 100] = i % 251
        return out


@pytest.mark.slow  # two processes, 4 s
def test_a_process_reading_the_cache_holds_no_private_copy(tmp_path, monkeypatch):
    """Reading every pixel of a 98 MB cache adds the file's pages (shared with every other
    process that maps it), not private memory: the basis of one copy under torchrun."""
    import subprocess
    import sys

    from torch_vae.data import datasets

    monkeypatch.setitem(datasets.DATASETS, "bigfake", BigFake())
    load_split("bigfake", "train", 128, tmp_path, progress=False)
    npy = tmp_path / "cache" / "bigfake-train-128.npy"
    code = (
        "import numpy as np\n"
        "from torch_vae.data import cache\n"
        "def rss():\n"
        "    f = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
        "    return int(f['RssAnon'].split()[0]), int(f['RssFile'].split()[0])\n"
        f"a = cache._read_cache(cache.Path({str(npy)!r}), "
        f"cache.Path({str(npy.with_suffix('.json'))!r}))\n"
        "before = rss()\n"
        "total = sum(int(a[i : i + 100].sum(dtype=np.int64)) for i in range(0, len(a), 100))\n"
        "after = rss()\n"
        "print(total, after[0] - before[0], after[1] - before[1])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    total, anon_kb, file_kb = map(int, out.stdout.split())
    size_kb = 2000 * 128 * 128 * 3 // 1024
    assert total == sum((i % 251) * 100 * 128 * 128 * 3 for i in range(0, 2000, 100))
    assert file_kb > 0.9 * size_kb and anon_kb < 0.1 * size_kb, (file_kb, anon_kb, size_kb)


def test_training_batches_leave_the_resident_set_small(tmp_path, monkeypatch):
    """Random batches of a training set that is a read-only map of the cache, as the training
    loop gathers them: read from the file (one pread per image), they map no page into the
    process, so its file-backed resident set does not grow towards the whole split (through the
    map, each image touched maps up to 2 MB of page-cache folio around it)."""
    import torch

    from torch_vae.data import datasets, read_only
    from torch_vae.training.batches import batch_source

    monkeypatch.setitem(datasets.DATASETS, "bigfake", BigFake())
    with warnings.catch_warnings():  # a read-only map, as training uses it
        warnings.simplefilter("ignore")
        images = torch.from_numpy(read_only(load_split("bigfake", "train", 128, tmp_path, False)))

    def rss_file_kb() -> int:
        fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return int(fields["RssFile"].split()[0])

    def peak_growth(gather) -> int:
        before, peak = rss_file_kb(), 0
        for batch in torch.randperm(2000)[:600].split(4):
            gather(batch)
            peak = max(peak, rss_file_kb() - before)
        return peak

    size_kb = 2000 * 128 * 128 * 3 // 1024
    assert peak_growth(batch_source(images, torch.device("cpu"), 4)) < 0.25 * size_kb
    assert peak_growth(lambda idx: images[idx]) > 0.8 * size_kb  # what the map alone does


_RGB = (128, 128, 3)


def test_the_validation_split_is_read_from_the_cache_file_without_mapping_it(tmp_path, monkeypatch):
    """The validation images a run holds out (here 200 of 2,000 at 128x128) are copied from the
    cache file like the training batches: through the map, each would map up to 2 MB of
    page-cache folio around it into the process."""
    import numpy as np
    import torch

    from torch_vae import ModelConfig
    from torch_vae.data import datasets
    from torch_vae.training import TrainConfig
    from torch_vae.training.plan import RunPlan, load_run_data

    monkeypatch.setitem(datasets.DATASETS, "bigfake", BigFake())
    load_split("bigfake", "test", 128, tmp_path, False)
    whole = np.array(load_split("bigfake", "train", 128, tmp_path, False))  # a copy, unmapped

    def rss_file_kb() -> int:
        fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return int(fields["RssFile"].split()[0])

    before = rss_file_kb()
    model = ModelConfig(in_channels=3, image_size=128, latent_dims=4, max_filters=8, depth=2)
    plan = RunPlan(tmp_path / "run", model, TrainConfig(dataset="bigfake", val_images=200),
                   data_dir=tmp_path)  # fmt: skip
    data = load_run_data(plan, progress=False)
    data.eval[:]  # an evaluation's reading
    grown = rss_file_kb() - before
    val = sorted(set(range(2000)) - set(data.rows.tolist()))
    images = data.eval[:]  # read when indexed, as each evaluation does
    assert data.prefix == "val" and images.shape == (len(val), 128, 128, 3) == (200, *_RGB)
    assert np.array_equal(np.sort(images.numpy().reshape(200, -1)[:, 0]),
                          np.sort(whole[val].reshape(200, -1)[:, 0]))  # fmt: skip
    # a torchrun process's share is its rows, read when its evaluation indexes them
    share = data.eval[1::2]
    assert len(share) == 100 and torch.equal(share[:], images[1::2])
    assert grown < 0.25 * (2000 * 128 * 128 * 3 // 1024), grown


def test_batches_of_a_mapped_cache_are_read_from_the_file_without_mapping_it(mnist_dir):
    import torch

    from torch_vae.data import read_only
    from torch_vae.data.cache import gather_for
    from torch_vae.training.batches import batch_source

    arr = load_split("mnist", "train", 32, mnist_dir, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = torch.from_numpy(read_only(arr))
    gather = batch_source(images, torch.device("cpu"), 8)
    idx = torch.tensor([39, 0, 7, 7, 20])
    assert gather is not None and torch.equal(gather(idx), torch.from_numpy(arr.copy())[idx])
    assert gather_for(torch.from_numpy(arr.copy())) is None  # in memory: plain indexing

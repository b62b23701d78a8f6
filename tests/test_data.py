import gzip
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

import fakedata
from torch_vae import TorchVaeError
from torch_vae.cli import main
from torch_vae.data import SPLITS, load_split
from torch_vae.data.datasets import get_dataset
from torch_vae.training.rundir import read_metrics


def test_mnist_idx_gz_resized(mnist_dir):
    arr = load_split("mnist", "train", 64, mnist_dir, progress=False)
    assert arr.shape == (40, 64, 64, 1) and arr.dtype == np.uint8
    assert load_split("mnist", "test", 28, mnist_dir, progress=False).shape == (20, 28, 28, 1)


def test_idx_uncompressed_in_torchvision_layout(tmp_path, monkeypatch):
    from torch_vae.data import datasets

    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {})
    data = fakedata.write_mnist(tmp_path / "FashionMNIST" / "raw", gz=False)
    arr = load_split("fashion-mnist", "test", 28, tmp_path, progress=False)
    assert np.array_equal(arr[..., 0], data["t10k"])


def test_cache_is_reused_and_rebuilt_when_corrupt(mnist_dir):
    first = load_split("mnist", "test", 32, mnist_dir, progress=False).copy()  # not the map
    npy = mnist_dir / "cache" / "mnist-test-32.npy"
    meta = json.loads(npy.with_suffix(".json").read_text())
    assert meta["shape"] == [20, 32, 32, 1]
    # the cache is used: removing the raw files does not matter
    for f in (mnist_dir / "mnist").iterdir():
        f.rename(f.with_suffix(".bak"))
    assert np.array_equal(load_split("mnist", "test", 32, mnist_dir, progress=False), first)
    for f in (mnist_dir / "mnist").iterdir():
        f.rename(f.with_suffix(".gz"))
    # flip a byte of the cached pixels (an edit, so a later mtime): detected by the checksum,
    # which the changed mtime calls for, and rebuilt from the raw files
    raw = bytearray(npy.read_bytes())
    raw[-1] ^= 0xFF
    npy.write_bytes(bytes(raw))
    os.utime(npy, ns=(npy.stat().st_atime_ns, npy.stat().st_mtime_ns + 10**9))
    assert np.array_equal(load_split("mnist", "test", 32, mnist_dir, progress=False), first)
    # truncate it: rebuilt too
    npy.write_bytes(npy.read_bytes()[:100])
    assert np.array_equal(load_split("mnist", "test", 32, mnist_dir, progress=False), first)


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_archive(tmp_path, register_md5s, hundred):
    name = "cifar-100" if hundred else "cifar-10"
    fakedata.write_cifar(tmp_path / name, hundred=hundred)
    register_md5s(name, tmp_path / name)
    train = load_split(name, "train", 32, tmp_path, progress=False)
    test = load_split(name, "test", 64, tmp_path, progress=False)
    assert train.shape == ((16 if hundred else 40), 32, 32, 3)
    assert test.shape == (8, 64, 64, 3)
    # pixel layout: the first training image equals the generated one
    expected = fakedata.blobs(8, 32, 3, 0)
    assert np.array_equal(train[:8], expected)


def test_cifar100_has_its_own_archive_and_fine_labels():
    assert get_dataset("cifar-100").files[0].name == "cifar-100-python.tar.gz"
    assert get_dataset("cifar-100").label_key == b"fine_labels"


def test_celeba_zip_read_without_unzipping(tmp_path, register_md5s):
    fakedata.write_celeba(tmp_path / "celeba", n=30)  # the original's manual-download folder
    register_md5s("celeb-a", tmp_path / "celeba")
    train = load_split("celeb-a", "train", 64, tmp_path, progress=False)
    test = load_split("celeb-a", "test", 32, tmp_path, progress=False)
    assert train.shape == (24, 64, 64, 3) and test.shape == (6, 32, 32, 3)
    assert not (tmp_path / "celeba" / "img_align_celeba").exists()


def test_celeba_partition_listing_missing_image(tmp_path, register_md5s):
    root = fakedata.write_celeba(tmp_path / "celeba", n=10)
    with open(root / "list_eval_partition.txt", "a") as f:
        f.write("999999.jpg 0\n")
    register_md5s("celeb-a", root)
    with pytest.raises(TorchVaeError, match="lacks 1 images.*999999.jpg"):
        load_split("celeb-a", "train", 32, tmp_path, progress=False)


@pytest.mark.parametrize("gray", [False, True])
def test_folder_dataset(tmp_path, gray):
    folder = fakedata.write_folder(tmp_path / "imgs", n=20, gray=gray)
    ds = get_dataset(f"folder:{folder}")
    assert ds.channels == (1 if gray else 3)
    train = load_split(f"folder:{folder}", "train", 32, tmp_path / "data", progress=False)
    test = load_split(str(folder), "test", 32, tmp_path / "data", progress=False)
    assert train.shape == (18, 32, 32, ds.channels) and test.shape == (2, 32, 32, ds.channels)


def test_folder_takes_ppm_and_pgm_images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(10):
        Image.new("L", (8, 8), 10 * i).save(folder / f"a{i}.png")
    Image.new("RGB", (8, 8), (250, 0, 0)).save(folder / "p.ppm")
    Image.new("L", (8, 8), 200).save(folder / "g.pgm")
    train = load_split(f"folder:{folder}", "train", 8, tmp_path / "data", progress=False)
    test = load_split(f"folder:{folder}", "test", 8, tmp_path / "data", progress=False)
    assert len(train) + len(test) == 12
    ds = get_dataset(f"folder:{folder}")
    names = {p.name for split in ("train", "test") for p in ds.list_images(split)}
    assert {"g.pgm", "p.ppm"} <= names
    assert ds.channels == 3  # the PPM is in colour


def test_folder_train_and_test_subfolders_are_the_splits(tmp_path):
    fakedata.write_folder(tmp_path / "imgs" / "train", n=6)
    fakedata.write_folder(tmp_path / "imgs" / "test", n=3, seed=9)
    assert load_split(f"folder:{tmp_path / 'imgs'}", "train", 16, tmp_path, False).shape[0] == 6
    assert load_split(f"folder:{tmp_path / 'imgs'}", "test", 16, tmp_path, False).shape[0] == 3


def test_hidden_files_and_folders_are_left_out_of_a_folder_dataset(tmp_path):
    from torch_vae.data.labels import class_names

    root = tmp_path / "imgs"
    fakedata.write_folder(root / "cats", n=10)
    fakedata.write_folder(root / "dogs", n=10, seed=3)
    (root / "cats" / "._cat.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # unreadable
    fakedata.write_folder(root / ".ipynb_checkpoints", n=5, seed=4)  # no class of its own
    fakedata.write_folder(root / "dogs" / ".thumbs", n=5, seed=5)
    ds = get_dataset(f"folder:{root}")
    listed = ds.list_images("train") + ds.list_images("test")
    assert len(listed) == 20 and not [p for p in listed if "/." in str(p)]
    assert class_names(f"folder:{root}", tmp_path) == ["cats", "dogs"]


@pytest.mark.parametrize(
    "content,match",
    [
        (b"not gzip", r"t10k-images-idx3-ubyte\.gz is corrupt \(Not a gzipped file"),
        (
            gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 6),
            r"t10k-images-idx3-ubyte\.gz is truncated \(incomplete header\)",
        ),
        (
            gzip.compress(b"\x01\x02\x03\x04"),
            r"t10k-images-idx3-ubyte\.gz is not an IDX file \(bad magic number\)",
        ),
        (
            gzip.compress(fakedata.idx_bytes(np.zeros((2, 28, 28), np.uint8))[:-10]),
            r"has 1574 bytes but its header \(2, 28, 28\) needs 1584; the file is truncated",
        ),
    ],
    ids=["not-gzip", "truncated-header", "bad-magic", "truncated-data"],
)
def test_bad_idx_file_gives_its_specific_error(
    tmp_path, monkeypatch, register_md5s, content, match
):
    """Past the checksum (the damaged file's own MD5 is registered), the IDX reader says what
    is wrong with the file."""
    from torch_vae.data import datasets

    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {})
    raw = tmp_path / "FashionMNIST" / "raw"
    fakedata.write_mnist(raw)
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(content)
    register_md5s("fashion-mnist", raw)
    with pytest.raises(TorchVaeError, match=match):
        load_split("fashion-mnist", "test", 28, tmp_path, progress=False)


def test_idx_gz_that_is_not_the_official_file_fails_the_checksum(tmp_path, monkeypatch):
    from torch_vae.data import datasets

    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {})
    raw = tmp_path / "FashionMNIST" / "raw"
    data = fakedata.write_mnist(raw, gz=False)  # uncompressed copies are checked structurally
    (raw / "t10k-images-idx3-ubyte").unlink()
    # a valid gzipped IDX file, but not the official bytes
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(fakedata.idx_bytes(data["t10k"])))
    with pytest.raises(
        TorchVaeError,
        match=r"t10k-images-idx3-ubyte\.gz does not match the official checksum "
        r"\(MD5 bef4ecab320f06d8554ea6380940ec79\)",
    ):
        load_split("fashion-mnist", "test", 28, tmp_path, progress=False)


def test_corrupt_cifar_and_celeba_archives_are_refused(tmp_path, register_md5s):
    (tmp_path / "cifar-10").mkdir()
    (tmp_path / "cifar-10" / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b garbage")
    register_md5s("cifar-10", tmp_path / "cifar-10")
    with pytest.raises(TorchVaeError, match="not a valid CIFAR python archive"):
        load_split("cifar-10", "test", 32, tmp_path, progress=False)
    root = fakedata.write_celeba(tmp_path / "celeba", n=5)
    (root / "img_align_celeba.zip").write_bytes(b"PK garbage")
    register_md5s("celeb-a", root)
    with pytest.raises(TorchVaeError, match="not a readable zip"):
        load_split("celeb-a", "test", 32, tmp_path, progress=False)


def test_cifar_pickle_cannot_run_code(tmp_path):
    import os
    import pickle

    from torch_vae.data.formats import read_cifar

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    (d / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(TorchVaeError, match="refusing to load"):
        read_cifar(d, ["test_batch"], b"labels")


def test_a_folder_with_too_few_or_no_images_says_which(tmp_path):
    few = fakedata.write_folder(tmp_path / "few", n=5)
    with pytest.raises(TorchVaeError, match=r"few holds 5 images, too few: every tenth is its "
                       r"test split, so a folder needs at least 10"):  # fmt: skip
        get_dataset(f"folder:{few}").list_images("test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TorchVaeError, match=r"^no images in .*empty \(looked for "):
        get_dataset(f"folder:{tmp_path / 'empty'}").list_images("train")
    fakedata.write_folder(tmp_path / "split" / "train", n=3)
    (tmp_path / "split" / "test").mkdir()
    with pytest.raises(TorchVaeError, match=r"^no images in .*split/test \("):
        get_dataset(f"folder:{tmp_path / 'split'}").list_images("test")


def test_unreadable_folder_images_are_named_in_one_error(tmp_path):
    folder = fakedata.write_folder(tmp_path / "imgs", n=12)
    (folder / "broken.png").write_bytes(b"\x89PNG nope")
    with pytest.raises(TorchVaeError, match=r"cannot read image .*broken.png \(.*; remove or "
                       r"replace it$"):  # fmt: skip
        get_dataset(f"folder:{folder}")
    for i in range(6):  # all of them at once, the first few by name, not one per run
        (folder / f"text{i}.png").write_text("not an image")
    with pytest.raises(TorchVaeError) as refused:
        get_dataset(f"folder:{folder}")
    said = str(refused.value)
    assert said.startswith(f"cannot read image {folder / 'broken.png'} (") and "\n" not in said
    named = ", ".join(str(folder / f"text{i}.png") for i in range(4))
    assert f"; 6 more cannot be read either: {named}, ...; remove or replace them" in said


@pytest.mark.parametrize("workers", ["1", "2"])
def test_truncated_folder_images_are_named_together_when_decoded(tmp_path, monkeypatch, workers):
    # a truncated PNG passes the folder's scan (its header is whole) and fails when decoded:
    # every such file of the split is named in one error, in or out of worker processes
    from torch_vae.data import parallel

    monkeypatch.setenv("TORCH_VAE_WORKERS", workers)
    monkeypatch.setattr(parallel, "CHUNK", 4)  # chunks of a few images, so that 2 workers
    monkeypatch.setattr(parallel, "MIN_PER_WORKER", 4)  # share these 36 (and the bad ones)
    folder = fakedata.write_folder(tmp_path / "imgs", n=40)
    whole = sorted(folder.glob("*.png"))[::3]  # img001, img007, img013: in three chunks
    for path in whole[:3]:
        path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(TorchVaeError) as refused:
        load_split(f"folder:{folder}", "train", 16, tmp_path / "data", progress=False)
    said = str(refused.value)
    assert said.startswith(f"cannot read image {whole[0]} (") and "\n" not in said
    assert said.endswith(f"; 2 more cannot be read either: {whole[1]}, {whole[2]}; remove or "
                         "replace them")  # fmt: skip


def test_unknown_dataset_and_empty_folder_are_refused(tmp_path):
    with pytest.raises(TorchVaeError, match="unknown dataset 'svhn'"):
        get_dataset("svhn")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TorchVaeError, match="no images"):
        get_dataset(f"folder:{tmp_path / 'empty'}")


@pytest.fixture
def small_chunks(monkeypatch):
    """Let a few dozen images be split over several worker processes."""
    from torch_vae.data import parallel

    monkeypatch.setattr(parallel, "CHUNK", 4)
    monkeypatch.setattr(parallel, "MIN_PER_WORKER", 4)


def test_parallel_celeba_decoding_is_identical(tmp_path, register_md5s, small_chunks, monkeypatch):
    root = fakedata.write_celeba(tmp_path / "src" / "celeba", n=45)
    register_md5s("celeb-a", root)
    results = {}
    for workers in ("1", "3"):
        monkeypatch.setenv("TORCH_VAE_WORKERS", workers)
        data_dir = tmp_path / f"w{workers}"
        data_dir.mkdir()
        (data_dir / "celeba").symlink_to(root)
        results[workers] = [load_split("celeb-a", s, 32, data_dir, False) for s in SPLITS]
    for a, b in zip(results["1"], results["3"], strict=True):
        assert a.shape[0] > 4 and np.array_equal(a, b)


def test_parallel_folder_decoding_is_identical(tmp_path, small_chunks, monkeypatch):
    from torch_vae.data.datasets import _decode_path
    from torch_vae.data.parallel import decode_all

    files = sorted(fakedata.write_folder(tmp_path / "imgs", n=30).iterdir())
    one = decode_all(files, _decode_path, 3, 24, workers=1, progress=False)
    many = decode_all(files, _decode_path, 3, 24, workers=2, progress=False)
    assert one.shape == (30, 24, 24, 3) and np.array_equal(one, many)


def test_error_in_worker_is_one_line(tmp_path, register_md5s, small_chunks, monkeypatch, capsys):
    import zipfile

    root = fakedata.write_celeba(tmp_path / "celeba", n=40)
    with zipfile.ZipFile(root / "img_align_celeba.zip") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["img_align_celeba/000027.jpg"] = b"\xff\xd8 not really a jpeg"
    with zipfile.ZipFile(root / "img_align_celeba.zip", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    register_md5s("celeb-a", root)
    monkeypatch.setenv("TORCH_VAE_WORKERS", "2")
    with pytest.raises(TorchVaeError, match="cannot read image 000027.jpg"):
        load_split("celeb-a", "train", 32, tmp_path, progress=False)
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--dataset", "celeb-a", "--data_dir", str(tmp_path), "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("torch-vae: error: cannot read image 000027.jpg") and "\n" not in err
    monkeypatch.setenv("TORCH_VAE_WORKERS", "zero")
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "TORCH_VAE_WORKERS must be a positive integer" in err and "\n" not in err


def test_a_run_records_its_folder_s_absolute_path(tmp_path, monkeypatch):
    from torch_vae.cli import main

    folder = tmp_path / "mine" / "shapes"
    folder.mkdir(parents=True)
    for i in range(20):
        Image.new("L", (28, 28), 10 * i).save(folder / f"i{i:02d}.png")
    monkeypatch.chdir(tmp_path / "mine")
    run = tmp_path / "run"
    args = ["train", "--dataset", "folder:shapes", "--run_dir", str(run), "--epochs", "1",
            "--max_steps", "1", "--image_size", "16", "--max_filters", "8", "--latent_dims", "2",
            "--data_dir", str(tmp_path / "data"), "--quiet", "--cpu"]  # fmt: skip
    assert main(args) == 0
    assert json.loads((run / "config.json").read_text())["train"]["dataset"] == f"folder:{folder}"
    monkeypatch.chdir(tmp_path)  # elsewhere, the run's commands still find its images
    assert main(["evaluate", "--model", str(run), "--data_dir", str(tmp_path / "data"),
                 "--iw_samples", "0", "--quiet", "--cpu"]) == 0  # fmt: skip


def test_a_photo_s_exif_orientation_is_applied_as_the_explorer_applies_it(tmp_path):
    from torch_vae.cli.common import read_image

    folder = tmp_path / "photos"
    folder.mkdir()
    stored = np.zeros((32, 64), np.uint8)
    stored[:, :32] = 255  # stored with its left half white; shown turned: its top half
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise to show"
    for i in range(10):
        Image.fromarray(stored).save(folder / f"p{i}.jpg", quality=95, exif=exif)
    train = load_split(f"folder:{folder}", "train", 16, tmp_path / "data", progress=False)
    # a folder's images, and an image file given by name (interpolate --images, as uploads)
    for img in (train[0, :, :, 0], read_image(folder / "p0.jpg", 1, 16)[:, :, 0]):
        img = img.astype(float)
        assert img[:6].mean() > 200 and img[-6:].mean() < 50  # top white, bottom black


def _folder_run_stopped_in_epoch_1(tmp_path):
    """(a folder of 20 images, a 2-epoch run on it stopped after its first step, the flags
    that find its data)."""
    from torch_vae.cli import main

    folder = tmp_path / "shapes"
    folder.mkdir()
    for i in range(20):
        Image.new("L", (28, 28), 10 * i).save(folder / f"i{i:02d}.png")
    run = tmp_path / "run"
    common = ["--data_dir", str(tmp_path / "data"), "--quiet", "--cpu"]
    assert main(["train", "--dataset", f"folder:{folder}", "--run_dir", str(run), "--epochs",
                 "2", "--max_steps", "1", "--image_size", "16", "--max_filters", "8",
                 "--latent_dims", "2", *common]) == 0  # fmt: skip
    return folder, run, common


def test_a_resume_on_a_folder_that_grew_says_to_start_from_the_run_s_weights(tmp_path, capsys):
    from torch_vae.cli import main

    folder, run, common = _folder_run_stopped_in_epoch_1(tmp_path)
    for i in range(20, 30):
        Image.new("L", (28, 28), 5 * i).save(folder / f"i{i:02d}.png")
    assert main(["train", "--resume", str(run), "--max_steps", "0", *common]) == 1
    err = capsys.readouterr().err
    assert (
        f"start a new one from its weights: torch-vae train --config {run / 'config.json'} "
        f"--init_from {run / 'model.safetensors'} (the run's flags;"
    ) in err, err


def test_a_refused_resume_leaves_config_json_as_it_was_and_names_weights_only_if_saved(
    tmp_path, capsys, monkeypatch
):
    import os
    import signal

    from torch_vae import VAE
    from torch_vae.cli import main

    folder = tmp_path / "shapes"
    folder.mkdir()
    for i in range(20):
        Image.new("L", (28, 28), 10 * i).save(folder / f"i{i:02d}.png")
    run, common = tmp_path / "run", ["--data_dir", str(tmp_path / "data"), "--quiet", "--cpu"]
    real, calls = VAE.objective, []

    def objective(*a, **k):  # Ctrl-C at the second step of epoch 1
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(VAE, "objective", objective)
    assert main(["train", "--dataset", f"folder:{folder}", "--run_dir", str(run), "--epochs",
                 "3", "--batchsize", "4", "--image_size", "16", "--max_filters", "8",
                 "--latent_dims", "2", *common]) == 130  # fmt: skip
    monkeypatch.setattr(VAE, "objective", real)
    assert (run / "ckpt.pt").is_file() and not (run / "model.safetensors").exists()
    config = (run / "config.json").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2", *common]) == 1
    err = capsys.readouterr().err
    assert "--epochs 2 is fewer than the run's own 3" in err
    assert err.strip().endswith("it has finished no epoch yet, so no weights are saved"), err
    Image.new("L", (28, 28), 7).save(folder / "added.png")  # the split grows: refused
    assert main(["train", "--resume", str(run), "--epochs", "4", *common]) == 1
    err = capsys.readouterr().err
    assert "the training split now has 18 images, but the run was trained on 17" in err, err
    anew = f"start a new one with torch-vae train --config {run / 'config.json'}"
    assert err.strip().endswith(f"it finished no epoch (no weights to start from): {anew}"), err
    assert (run / "config.json").read_bytes() == config  # neither --epochs 4 nor the new split


def test_a_run_whose_folder_moved_continues_there_once_its_images_match(tmp_path, capsys):
    from torch_vae.cli import main

    folder, run, common = _folder_run_stopped_in_epoch_1(tmp_path)
    moved = tmp_path / "moved"
    folder.rename(moved)
    resume = ["train", "--resume", str(run), "--max_steps", "0", *common]
    assert main(resume) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"torch-vae: error: the run in {run} trains on the image folder {folder}, "
                   "which does not exist any more; if it moved, continue it there with "
                   f"--resume {run} --dataset folder:NEWPATH, or move it back, or start a new "
                   f"run from its weights: torch-vae train --config {run / 'config.json'} "
                   f"--init_from {run / 'model.safetensors'} --dataset folder:NEWPATH (the "
                   "run's flags; --epochs for fewer epochs)"]  # fmt: skip
    other = tmp_path / "other"  # as many images, other ones
    other.mkdir()
    for i in range(20):
        Image.new("L", (28, 28), 7 * i).save(other / f"o{i:02d}.png")
    assert main([*resume, "--dataset", f"folder:{other}"]) == 1
    assert "does not hold the images the run in" in capsys.readouterr().err
    assert main([*resume, "--dataset", "mnist"]) == 1
    assert "pass the folder it moved to as folder:NEWPATH" in capsys.readouterr().err
    assert main([*resume, "--dataset", f"folder:{moved}"]) == 0  # the run goes on there
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["dataset"] == f"folder:{moved}"
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]
    assert main(["train", "--resume", str(run), "--epochs", "3", *common]) == 0  # no flag now
    import torch_vae  # from Python: moved_to

    moved.rename(tmp_path / "again")
    torch_vae.train(resume=run, epochs=4, moved_to=tmp_path / "again",
                    data_dir=tmp_path / "data", device="cpu", progress=False)  # fmt: skip
    assert json.loads((run / "config.json").read_text())["train"]["dataset"] == (
        f"folder:{tmp_path / 'again'}"
    )
    with pytest.raises(TypeError, match="moved_to go with resume"):
        torch_vae.train("dcgan", moved_to=tmp_path / "again")


def test_conditional_training_warns_of_a_class_with_only_test_images(tmp_path, caplog):
    from torch_vae.cli import main

    folder = tmp_path / "kinds"
    for split, classes in (("train", "xy"), ("test", "xz")):
        for c in classes:
            (folder / split / c).mkdir(parents=True)
            for i in range(6):
                Image.new("L", (16, 16), 20 * i).save(folder / split / c / f"{c}{i}.png")
    args = ["train", "--dataset", f"folder:{folder}", "--conditional", "--run_dir",
            str(tmp_path / "run"), "--data_dir", str(tmp_path / "data"), "--max_steps", "1",
            "--quiet", "--cpu", "--image_size", "16", "--max_filters", "8", "--latent_dims",
            "2", "--val_images", "0"]  # fmt: skip
    assert main(args) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [w for w in warned if w.startswith("class(es) z have no training images")], warned
    assert not [w for w in warned if w.startswith(("class(es) x", "class(es) y"))]


def test_a_folder_split_into_train_and_val_is_warned_about(tmp_path, caplog):
    from torch_vae.cli import main

    folder = tmp_path / "tv"
    for split in ("train", "val"):
        fakedata.write_folder(folder / split, n=8)
    args = ["train", "--dataset", f"folder:{folder}", "--run_dir", str(tmp_path / "run"),
            "--data_dir", str(tmp_path / "data"), "--dry_run", "--quiet", "--cpu",
            "--image_size", "16", "--max_filters", "8", "--latent_dims", "2"]  # fmt: skip
    assert main(args) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [w for w in warned if "has train/ and val/ but no test/" in w], warned
    caplog.clear()
    (folder / "val").rename(folder / "test")  # the splits torch-vae reads: no warning
    assert main([*args[:4], str(tmp_path / "run2"), *args[5:]]) == 0
    assert not [r for r in caplog.records if "but no test/" in r.getMessage()]


def test_conditional_training_names_the_images_outside_class_subfolders(tmp_path, capsys):
    from torch_vae.cli import main

    folder = tmp_path / "kinds"
    for c in ("round", "square"):
        (folder / c).mkdir(parents=True)
        for i in range(10):
            Image.new("L", (16, 16), 20 * i).save(folder / c / f"{c}{i}.png")
    Image.new("L", (16, 16), 9).save(folder / "stray.png")
    args = ["train", "--dataset", f"folder:{folder}", "--conditional", "--run_dir",
            str(tmp_path / "run"), "--data_dir", str(tmp_path / "data"), "--dry_run", "--quiet",
            "--cpu", "--image_size", "16", "--max_filters", "8", "--latent_dims", "2"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "not in a class subfolder: stray.png); --conditional needs one" in err, err


def test_a_folder_s_files_of_other_kinds_are_named_once_when_it_is_read(tmp_path, caplog):
    from torch_vae.data import load_split

    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(12):
        Image.new("L", (20, 20), 9 * i).save(folder / f"i{i:02d}.png")
    for name in ("notes.txt", "photo.heic", "scan.jfif", "other.HEIC", ".hidden.heic"):
        (folder / name).write_bytes(b"x")
    with caplog.at_level(logging.INFO, logger="torch_vae"):
        for split in ("train", "test"):
            load_split(f"folder:{folder}", split, 16, tmp_path / "data", progress=False)
    said = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert said == [f"{folder}: left out 4 files of other kinds than images read (.heic 2, "
                    ".jfif 1, .txt 1; read: .bmp, .gif, .jpeg, .jpg, .pgm, .png, .pnm, .ppm, "
                    ".tif, .tiff, .webp)"]  # fmt: skip


def test_a_folder_s_images_smaller_than_the_image_size_are_counted_once(tmp_path, caplog):
    from torch_vae.data import load_split

    folder = tmp_path / "tiny"
    folder.mkdir()
    for i in range(12):  # every other one 8x8, the rest 20x30
        Image.new("L", (8, 8) if i % 2 else (20, 30), 9 * i).save(folder / f"i{i:02d}.png")
    with caplog.at_level(logging.INFO, logger="torch_vae"):
        for split in ("train", "test"):
            load_split(f"folder:{folder}", split, 16, tmp_path / "data", progress=False)
        load_split(f"folder:{folder}", "train", 8, tmp_path / "data", progress=False)
    said = [r.getMessage() for r in caplog.records if "upscaled" in r.getMessage()]
    assert said == [
        "6 of the folder's 12 images are smaller than 16x16 (shorter side; the "
        "smallest 8 pixels): they are upscaled, blurred; a model of a smaller "
        "image size (train --image_size) keeps them sharp, as does one that works on their "
        "originals (train --native_size, for images all of one size; docs/model.md)"
    ]


def test_commands_on_a_model_whose_image_folder_changed_warn_of_its_test_split(tmp_path, caplog):
    """Images added to the folder move others between the splits (every tenth of the sorted
    names is a test image): evaluate measured images the model trained on without a word, and
    fit-sampler said the run held out no validation split."""
    from torch_vae.cli import main

    folder, run, common = _folder_run_stopped_in_epoch_1(tmp_path)
    assert json.loads((run / "config.json").read_text())["split"]["validation_images"] == 1
    evaluate = ["evaluate", "--model", str(run), "--iw_samples", "0", *common]
    changed = (f"{folder}: images were added or removed since the run of {run} trained on it; "
               "its splits come from the sorted file names")  # fmt: skip
    Image.new("L", (28, 28), 77).save(folder / "i03.png", pnginfo=_tagged())  # other bytes
    with caplog.at_level(logging.WARNING, logger="torch_vae"):  # the same names: the same splits
        assert main([*evaluate, "--report", str(tmp_path / "before.json")]) == 0
    assert "since the run" not in caplog.text
    Image.new("L", (28, 28), 3).save(folder / "a-new-one.png")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="torch_vae"):
        assert main([*evaluate, "--report", str(tmp_path / "after.json")]) == 0
        assert main(["fit-sampler", "--model", str(run), "--sampler", "gaussian", *common]) == 0
    assert caplog.text.count(changed) == 2, caplog.text
    assert ("training images (the run's validation split is not among them: another dataset, "
            "or one changed since the run)") in caplog.text  # fmt: skip
    assert "held out no validation split" not in caplog.text
    config = json.loads((run / "config.json").read_text())  # a run from before names were kept
    del config["image_names_sha256"]
    (run / "config.json").write_text(json.dumps(config))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="torch_vae"):
        assert main([*evaluate, "--report", str(tmp_path / "older.json")]) == 0
    assert f"{folder}: images (or their file sizes) changed since the run of {run}" in caplog.text


def _tagged():
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "retagged by a photo manager")
    return info


def test_a_folder_with_train_and_test_subfolders_that_grew_keeps_its_splits_unwarned(
    tmp_path, caplog
):
    from torch_vae.cli import main

    folder = tmp_path / "split"
    for split, n in (("train", 16), ("test", 4)):
        (folder / split).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (28, 28), 10 * i).save(folder / split / f"{split}{i:02d}.png")
    run, common = tmp_path / "run", ["--data_dir", str(tmp_path / "data"), "--quiet", "--cpu"]
    assert main(["train", "--dataset", f"folder:{folder}", "--run_dir", str(run), "--epochs",
                 "1", "--max_steps", "1", "--image_size", "16", "--max_filters", "8",
                 "--latent_dims", "2", *common]) == 0  # fmt: skip
    Image.new("L", (28, 28), 1).save(folder / "test" / "test99.png")  # a test image more
    with caplog.at_level(logging.WARNING, logger="torch_vae"):
        assert main(["evaluate", "--model", str(run), "--iw_samples", "0", *common]) == 0
    assert "since the run" not in caplog.text

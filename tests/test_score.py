"""torch-vae score (anomaly scores, ROC against out-of-distribution images) and train
--exclude_class, on the tiny labelled MNIST of conftest (image i of each split: class i % 10)."""

import csv
import io
import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from torch_vae import VAE, ModelConfig
from torch_vae.cli import main
from torch_vae.data import load_split
from torch_vae.io.files import file_sha256
from torch_vae.io.weights import resolve_weights
from torch_vae.training import TrainConfig

SCORES = ["neg_elbo", "recon", "iw_nll", "png_bpd", "neg_elbo_ic", "iw_nll_ic"]
COLUMNS = ["source", "dataset", "split", "index", "file", "label", *SCORES]


def black_model(folder, conditional=False):
    """A model whose decoder draws black images whatever the code: its reconstruction error is
    the image's mean square, so bright images are told apart from dark ones exactly."""
    classes = tuple(str(i) for i in range(10)) if conditional else ()
    config = ModelConfig(arch="dcgan", image_size=16, depth=2, max_filters=8, latent_dims=2,
                         classes=classes)  # fmt: skip
    torch.manual_seed(0)
    model = VAE(config)
    with torch.no_grad():
        model.decoder.convs[-1].weight.zero_()
        model.decoder.convs[-1].bias.fill_(-20.0)
    return model.save_pretrained(folder, dataset="mnist")


def score(model, data_dir, *flags):
    return main(["score", "--model", str(model), "--data_dir", str(data_dir), "--cpu",
                 "--quiet", *flags])  # fmt: skip


def test_scores_csv_has_one_row_per_test_image_with_every_score(labelled, tmp_path):
    model = black_model(tmp_path / "m")
    out = tmp_path / "scores.csv"
    assert score(model, labelled, "--out", str(out), "--iw_samples", "4") == 0
    with out.open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS
    assert [int(r["index"]) for r in rows] == list(range(20))
    assert [int(r["label"]) for r in rows] == [i % 10 for i in range(20)]
    assert {r["source"] for r in rows} == {"in"} and {r["split"] for r in rows} == {"test"}
    images = load_split("mnist", "test", 16, labelled, progress=False) / 255.0
    recon = np.array([float(r["recon"]) for r in rows])
    assert np.allclose(recon, (images**2).mean((1, 2, 3)), rtol=1e-4)  # the decoder's black
    for r, img in zip(rows, images, strict=True):  # complexity: the PNG's bits per pixel
        buf = io.BytesIO()
        Image.fromarray((img[..., 0] * 255).round().astype(np.uint8)).save(
            buf, "PNG", compress_level=9
        )
        assert float(r["png_bpd"]) == pytest.approx(8 * len(buf.getvalue()) / 256)
        for name in ("neg_elbo", "iw_nll"):
            corrected = float(r[name]) / (256 * math.log(2)) - float(r["png_bpd"])
            assert float(r[f"{name}_ic"]) == pytest.approx(corrected)
    summary = json.loads((tmp_path / "scores.summary.json").read_text())
    assert summary["in_distribution"]["images"] == 20 and "out_of_distribution" not in summary
    assert summary["model_sha256"] == file_sha256(resolve_weights(model))


def test_scores_json_without_iw_samples_has_no_iw_columns(labelled, tmp_path):
    model = black_model(tmp_path / "m")
    out = tmp_path / "scores.json"
    assert score(model, labelled, "--out", str(out), "--nimages", "7") == 0
    report = json.loads(out.read_text())
    assert len(report["images"]) == 7
    assert list(report["images"][0]) == [c for c in COLUMNS if not c.startswith("iw_")]
    assert list(report["scores"]) == ["neg_elbo", "recon", "neg_elbo_ic"]


def test_ood_class_splits_the_split_by_class_and_auroc_is_sklearns(labelled, tmp_path):
    model = black_model(tmp_path / "m")
    out = tmp_path / "scores.json"
    figure = tmp_path / "roc.png"
    flags = ["--ood_class", "3", "--out", str(out), "--figure", str(figure), "--fpr", "0.2"]
    assert score(model, labelled, *flags, "--iw_samples", "2") == 0
    report = json.loads(out.read_text())
    rows = report["images"]
    ood = [r for r in rows if r["source"] == "ood"]
    inlier = [r for r in rows if r["source"] == "in"]
    assert [r["index"] for r in ood] == [3, 13] and {r["label"] for r in ood} == {3}
    assert sorted(r["index"] for r in inlier) == [i for i in range(20) if i % 10 != 3]
    assert 3 not in {r["label"] for r in inlier}
    y = [0] * len(inlier) + [1] * len(ood)
    for name, s in report["scores"].items():
        values = [r[name] for r in inlier] + [r[name] for r in ood]
        assert s["auroc"] == pytest.approx(roc_auc_score(y, values), abs=1e-12), name
        # the operating point: a false-positive rate at most --fpr, and its true-positive rate
        flagged_in = np.mean([r[name] >= s["threshold"] for r in inlier])
        flagged_ood = np.mean([r[name] >= s["threshold"] for r in ood])
        assert flagged_in == pytest.approx(s["fpr"]) and s["fpr"] <= 0.2
        assert flagged_ood == pytest.approx(s["tpr"])
    with Image.open(figure) as img:
        assert img.width > 400 and img.height > 400


def test_perfectly_separable_ood_images_get_auroc_one(labelled, tmp_path):
    folder = tmp_path / "white"
    folder.mkdir()
    for i in range(12):  # white images, where every in-distribution image is mostly black
        Image.new("L", (28, 28), 255).save(folder / f"w{i:02d}.png")
    model = black_model(tmp_path / "m")
    out = tmp_path / "scores.json"
    flags = ["--ood", f"folder:{folder}", "--out", str(out), "--iw_samples", "4"]
    assert score(model, labelled, *flags) == 0
    report = json.loads(out.read_text())
    assert report["out_of_distribution"]["images"] == 12
    for name in ("neg_elbo", "recon", "iw_nll"):
        assert report["scores"][name]["auroc"] == 1.0, name
        assert report["scores"][name]["tpr"] == 1.0, name
    assert (tmp_path / "scores.png").is_file()


def test_a_folder_of_colour_images_is_scored_as_grey_by_a_grey_model(labelled, tmp_path, caplog):
    # the black model's reconstruction error is the image's mean square: the colour images
    # score as their grey conversion (Pillow's) scores
    colours = [(200, 100, 50), (10, 240, 90), (255, 255, 255), (0, 0, 120)]
    folders = {"rgb": tmp_path / "rgb", "grey": tmp_path / "grey"}
    for kind, folder in folders.items():
        folder.mkdir()
        for i, c in enumerate(colours * 3):
            img = Image.new("RGB", (28, 28), c)
            (img if kind == "rgb" else img.convert("L")).save(folder / f"c{i:02d}.png")
    model = black_model(tmp_path / "m")
    recon = {}
    for kind, folder in folders.items():
        out = tmp_path / f"{kind}.csv"
        with caplog.at_level("INFO", logger="torch_vae"):
            assert score(model, labelled, "--ood", f"folder:{folder}", "--out", str(out),
                         "--iw_samples", "0") == 0  # fmt: skip
        rows = list(csv.DictReader(out.open()))
        recon[kind] = [float(r["recon"]) for r in rows if r["source"] == "ood"]
    assert len(recon["rgb"]) == 12 and recon["rgb"] == recon["grey"]
    assert "the folder's images are converted to grey, as the model takes them" in caplog.text


def test_reconstruct_and_evaluate_take_a_colour_folder_as_grey_for_a_grey_model(tmp_path, caplog):
    # as score --ood does: the black model's reconstruction error is the image's mean square,
    # so evaluate's recon is the mean square of the folder's grey conversions (Pillow's)
    colours = [(200, 100, 50), (10, 240, 90), (255, 255, 255), (0, 0, 120)] * 5
    folder = tmp_path / "rgb"
    folder.mkdir()
    for i, c in enumerate(colours):
        Image.new("RGB", (28, 28), c).save(folder / f"c{i:02d}.png")
    model, flags = black_model(tmp_path / "m"), ["--dataset", f"folder:{folder}", "--cpu"]
    with caplog.at_level("INFO", logger="torch_vae"):
        assert main(["reconstruct", "--model", str(model), *flags, "--rec_testdata",
                     "--outdir", str(tmp_path / "rec")]) == 0  # fmt: skip
    assert "the folder's images are converted to grey, as the model takes them" in caplog.text
    assert len(list((tmp_path / "rec").glob("rec_*.png"))) == 2  # every tenth is the test split
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(model), *flags, "--iw_samples", "0",
                 "--report", str(report)]) == 0  # fmt: skip
    greys = [Image.new("RGB", (1, 1), c).convert("L").getpixel((0, 0)) for c in colours]
    test = [(greys[i] / 255) ** 2 for i in range(len(colours)) if i % 10 == 9]
    metrics = json.loads(report.read_text())
    assert metrics["mse"] == pytest.approx(np.mean(test), abs=1e-4)


def test_a_folder_of_fewer_than_ten_images_points_to_split_train(tmp_path, capsys):
    folder = tmp_path / "few"
    folder.mkdir()
    for i in range(4):
        Image.new("L", (28, 28), 60 * i).save(folder / f"g{i}.png")
    embed = ["embed", "--model", str(black_model(tmp_path / "m")), "--dataset",
             f"folder:{folder}", "--cpu", "--outdir", str(tmp_path / "e")]  # fmt: skip
    assert main(embed) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(
        "read them all with --split train, and reconstruct without --rec_testdata"
    ), err
    assert main([*embed, "--split", "train"]) == 0 and (tmp_path / "e" / "embed.png").is_file()


def test_reconstructions_of_a_folder_list_their_image_files(labelled, tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i in range(20):
        Image.new("L", (28, 28), 10 * i).save(folder / ("sub" if i == 19 else "") / f"g{i:02d}.png")
    model, out = black_model(tmp_path / "m"), tmp_path / "rec"
    rec = ["reconstruct", "--model", str(model), "--cpu", "--rec_testdata", "--outdir", str(out)]
    assert main([*rec, "--dataset", f"folder:{folder}"]) == 0
    rows = list(csv.DictReader((out / "rec_sources.csv").open()))
    assert rows == [{"reconstruction": "rec_00000.png", "file": "g09.png"},
                    {"reconstruction": "rec_00001.png", "file": "sub/g19.png"}]  # fmt: skip
    # reconstructions of a registered dataset into the same folder: the old list goes
    assert main([*rec, "--data_dir", str(labelled), "--nimages", "3"]) == 0
    assert not (out / "rec_sources.csv").exists() and (out / "rec_00002.png").is_file()


def test_pictures_inside_the_image_folder_read_are_refused(tmp_path, capsys):
    # they would be read back as images of the folder by the next command
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(20):
        Image.new("L", (28, 28), 10 * i).save(folder / f"g{i:02d}.png")
    before = sorted(folder.rglob("*"))
    config = ModelConfig(arch="dcgan", image_size=16, depth=2, max_filters=8, latent_dims=2)
    model = VAE(config).save_pretrained(tmp_path / "m", dataset=f"folder:{folder}")
    for command in (["reconstruct", "--dataset", f"folder:{folder}"], ["generate"],
                    ["embed"], ["manifold"], ["interpolate"]):  # fmt: skip
        args = [*command, "--model", str(model), "--cpu", "--outdir", str(folder / "out")]
        assert main(args) == 1, command
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--outdir {folder / 'out'} is inside the image folder" in err[0]
    # score's picture (beside --out, or --figure) and sharpen's model folder too
    other = tmp_path / "other"
    other.mkdir()
    for i in range(10):
        Image.new("L", (28, 28), 20 * i).save(other / f"o{i}.png")
    score = ["score", "--model", str(model), "--cpu", "--ood", f"folder:{other}"]
    cases = ((["--out", str(folder / "s.csv")],
              f"--out {folder / 's.csv'}: its picture {folder / 's.png'} is inside the image "
              f"folder {folder.resolve()}"),
             (["--out", str(other / "s.csv")],
              f"--out {other / 's.csv'}: its picture {other / 's.png'} is inside"),
             (["--figure", str(folder / "f.png")],
              f"--figure {folder / 'f.png'} is inside"))  # fmt: skip
    for flags, said in cases:
        assert main([*score, *flags]) == 1, flags
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"torch-vae: error: {said}"), err
    # reading other images, into the model's own training folder
    rec = ["reconstruct", "--model", str(model), "--cpu", "--dataset", f"folder:{other}"]
    assert main([*rec, "--outdir", str(folder / "out")]) == 1
    assert f"--outdir {folder / 'out'} is inside the image folder {folder}" in (
        capsys.readouterr().err)  # fmt: skip
    sharpen = ["sharpen", "--model", str(model), "--cpu", "--out", str(folder / "sharp")]
    assert main(sharpen) == 1
    assert f"--out {folder / 'sharp'} is inside the image folder" in capsys.readouterr().err
    assert sorted(folder.rglob("*")) == before and sorted(other.rglob("*"))[-1].name == "o9.png"
    outside = ["reconstruct", "--model", str(model), "--cpu", "--outdir", str(tmp_path / "rec")]
    assert main(outside) == 0 and (tmp_path / "rec" / "all.png").is_file()


def test_a_folder_s_rows_name_each_image_s_file(labelled, tmp_path):
    # the black model's reconstruction error is the image's mean square: each row's score
    # says which file it was
    folder = tmp_path / "greys"
    (folder / "sub").mkdir(parents=True)
    levels = {f"{'sub/' if i % 3 == 0 else ''}g{i:02d}.png": 20 * i for i in range(12)}
    for name, level in levels.items():
        Image.new("L", (28, 28), level).save(folder / name)
    model = black_model(tmp_path / "m")
    out = tmp_path / "scores.csv"
    assert score(model, labelled, "--ood", f"folder:{folder}", "--out", str(out),
                 "--iw_samples", "0") == 0  # fmt: skip
    rows = [r for r in csv.DictReader(out.open()) if r["source"] == "ood"]
    assert sorted(r["file"] for r in rows) == sorted(levels)
    for r in rows:
        assert float(r["recon"]) == pytest.approx((levels[r["file"]] / 255) ** 2, abs=1e-4)
    inliers = [r for r in csv.DictReader(out.open()) if r["source"] != "ood"]
    assert inliers and all(r["file"] == "" for r in inliers)


def test_an_in_distribution_folder_s_rows_name_their_files_and_its_path_is_absolute(
    labelled, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    for name in ("mine", "other"):
        (tmp_path / name).mkdir()
        for i in range(20):
            Image.new("L", (28, 28), 10 * i).save(tmp_path / name / f"g{i:02d}.png")
    out = tmp_path / "scores.csv"
    assert score(black_model(tmp_path / "m"), labelled, "--dataset", "folder:mine", "--ood",
                 "folder:other", "--out", str(out), "--iw_samples", "0") == 0  # fmt: skip
    rows = list(csv.DictReader(out.open()))
    assert [r["file"] for r in rows if r["source"] == "in"] == ["g09.png", "g19.png"]
    assert {r["dataset"] for r in rows} == {f"folder:{tmp_path / 'mine'}",
                                            f"folder:{tmp_path / 'other'}"}  # fmt: skip


def test_a_folder_of_fewer_than_ten_images_is_scored_as_ood_whole(labelled, tmp_path):
    # a folder's every tenth image is its test split, which 4 images do not have; --ood reads
    # both splits and takes all 4 from the first
    folder = tmp_path / "few"
    folder.mkdir()
    levels = {f"g{i}.png": 60 * i for i in range(4)}
    for name, level in levels.items():
        Image.new("L", (28, 28), level).save(folder / name)
    out = tmp_path / "scores.csv"
    assert score(black_model(tmp_path / "m"), labelled, "--ood", f"folder:{folder}", "--out",
                 str(out), "--iw_samples", "0") == 0  # fmt: skip
    rows = [r for r in csv.DictReader(out.open()) if r["source"] == "ood"]
    assert sorted(r["file"] for r in rows) == sorted(levels)


def test_exclude_class_removes_the_classes_from_training_batches(labelled, tmp_path, monkeypatch):
    from torch_vae.training import loop

    seen = []

    def recording(*args, **kwargs):
        fetch = real(*args, **kwargs)

        def fetch_and_record(idx):
            batch = fetch(idx)
            seen.extend(bytes(img.numpy().tobytes()) for img in batch)
            return batch

        return fetch_and_record

    real = loop.batch_source
    monkeypatch.setattr(loop, "batch_source", recording)
    run = tmp_path / "run"
    flags = ["train", "--dataset", "mnist", "--data_dir", str(labelled), "--run_dir", str(run),
             "--arch", "dcgan", "--image_size", "16", "--depth", "2", "--max_filters", "8",
             "--latent_dims", "2", "--epochs", "1", "--batchsize", "8", "--val_images", "4",
             "--exclude_class", "3", "--exclude_class", "5,7", "--quiet", "--cpu"]  # fmt: skip
    assert main(flags) == 0
    train = load_split("mnist", "train", 16, labelled, progress=False)
    labels = np.arange(len(train)) % 10
    excluded = {bytes(img.tobytes()) for img in train[np.isin(labels, [3, 5, 7])]}
    assert seen and not excluded & set(seen)
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["exclude_class"] == [3, 5, 7]
    kept = int((~np.isin(labels, [3, 5, 7])).sum())
    split = config["split"]
    assert len(set(seen)) == split["training_images"]
    assert split["training_images"] + split["validation_images"] == kept


def _two_class_folder(root, test_classes=("a", "b")):
    """train/a, train/b (15 images each) and test/ with 5 of each of ``test_classes``."""
    for split, classes, n in (("train", ("a", "b"), 15), ("test", test_classes, 5)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("L", (16, 16), 10 * i + (100 if c == "b" else 0)).save(
                    root / split / c / f"{i:02d}.png"
                )
    return f"folder:{root}"


def test_fit_sampler_of_a_run_without_validation_images_scores_on_its_classes_only(
    tmp_path, monkeypatch
):
    from torch_vae.cli import fit_sampler
    from torch_vae.data import load_split

    dataset = _two_class_folder(tmp_path / "im")  # rows 0-14: class a, 15-29: class b
    run = tmp_path / "run"
    assert main(["train", "--dataset", dataset, "--arch", "dcgan", "--image_size", "16",
                 "--max_filters", "8", "--depth", "2", "--latent_dims", "2", "--epochs", "1",
                 "--val_images", "0", "--exclude_class", "b", "--run_dir", str(run),
                 "--quiet"]) == 0  # fmt: skip
    scored, real = [], fit_sampler.scorer
    monkeypatch.setattr(fit_sampler, "scorer", lambda m, images, *a, **k: scored.append(
        images) or real(m, images, *a, **k))  # fmt: skip
    fit = ["fit-sampler", "--model", str(run), "--sampler", "gaussian", "--nscore", "8"]
    assert main([*fit, "--quiet"]) == 0
    train = load_split(dataset, "train", 16, progress=False)
    (images,) = scored
    assert len(images) == 8
    assert all(any(np.array_equal(x, t) for t in train[:15]) for x in images)  # class a's


def test_exclude_class_of_every_validation_image_measures_epochs_on_the_test_split(
    tmp_path, caplog
):
    # 30 training images hold out 3 for validation; with seed 0 all three are of class b
    dataset = _two_class_folder(tmp_path / "im")
    run = tmp_path / "run"
    flags = ["train", "--dataset", dataset, "--arch", "dcgan", "--image_size", "16",
             "--max_filters", "8", "--depth", "2", "--latent_dims", "2", "--epochs", "1",
             "--batchsize", "8", "--exclude_class", "b", "--run_dir", str(run),
             "--quiet"]  # fmt: skip
    with caplog.at_level("WARNING", logger="torch_vae"):
        assert main(flags) == 0
    assert "all of the classes --exclude_class leaves out" in caplog.text
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert (run / "model.safetensors").is_file() and math.isfinite(record["test_loss"])


def test_exclude_class_says_how_many_validation_images_it_takes_away(tmp_path, caplog):
    from torch_vae.data.splits import validation_rows

    dataset = _two_class_folder(tmp_path / "im")  # rows 0-14: class a, 15-29: class b
    _, val = validation_rows(30, 5000, 1)
    gone = int((val >= 15).sum())
    assert 0 < gone < len(val)
    flags = ["train", "--dataset", dataset, "--arch", "dcgan", "--image_size", "16",
             "--max_filters", "8", "--depth", "2", "--epochs", "1", "--exclude_class", "b",
             "--seed", "1", "--run_dir", str(tmp_path / "run"), "--quiet"]  # fmt: skip
    with caplog.at_level("INFO", logger="torch_vae"):
        assert main(flags) == 0
    said = f"{gone} of the {len(val)} validation images drawn are of the classes --exclude_class"
    assert f"{said} leaves out: {len(val) - gone} remain" in caplog.text
    # evaluate measures every class of the split: it says that the left-out one is in it
    with caplog.at_level("INFO", logger="torch_vae"):
        assert main(["evaluate", "--model", str(tmp_path / "run"), "--iw_samples", "0"]) == 0
    assert (
        "the model's run left out class(es) 1 (--exclude_class): the test split measured "
        "holds them too" in caplog.text
    )
    # so does reconstruct, of the split it reconstructs
    caplog.clear()
    with caplog.at_level("INFO", logger="torch_vae"):
        assert main(["reconstruct", "--model", str(tmp_path / "run"), "--outdir",
                     str(tmp_path / "rec"), "--rec_testdata"]) == 0  # fmt: skip
    assert (
        "the model's run left out class(es) 1 (--exclude_class): the test split reconstructed "
        "holds them too, images of classes it never saw" in caplog.text
    )


def test_exclude_class_leaving_no_image_to_measure_on_is_one_line(tmp_path, capsys):
    dataset = _two_class_folder(tmp_path / "im", test_classes=("b",))
    flags = ["train", "--dataset", dataset, "--arch", "dcgan", "--image_size", "16",
             "--max_filters", "8", "--depth", "2", "--epochs", "1", "--exclude_class", "b",
             "--run_dir", str(tmp_path / "run"), "--quiet"]  # fmt: skip
    assert main(flags) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--exclude_class 1 leaves no image of folder:" in err[0], err
    assert not (tmp_path / "run").exists()


def test_exclude_class_is_recorded_as_indices_and_old_runs_have_none():
    assert TrainConfig(exclude_class=["3,sandal", "5"]).exclude_class == (3, "sandal", 5)
    old = TrainConfig().to_dict()
    del old["exclude_class"]
    assert TrainConfig.from_dict(old).exclude_class == ()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--exclude_class", "seven"], "--exclude_class: unknown class 'seven'"),
        (["--exclude_class", "0-9"], "--exclude_class: unknown class '0-9'"),
        (["--exclude_class", "3,,4"], "has an empty class"),
        (["--exclude_class", ",".join(map(str, range(10)))], "leaves none of the 10 classes"),
    ],
)
def test_exclude_class_errors_are_one_line(labelled, tmp_path, capsys, flags, message):
    args = ["train", "--dataset", "mnist", "--data_dir", str(labelled), "--run_dir",
            str(tmp_path / "run"), "--dry_run", "--quiet", "--cpu", *flags]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_folders_of_the_same_relative_name_get_their_own_reports(labelled, tmp_path, monkeypatch):
    model = black_model(tmp_path / "m")
    for where in ("x", "y"):  # two folders both called "b", from two working folders
        (tmp_path / where / "b").mkdir(parents=True)
        for i in range(10):
            Image.new("L", (28, 28), 20 * i).save(tmp_path / where / "b" / f"i{i}.png")
        monkeypatch.chdir(tmp_path / where)
        assert score(model, labelled, "--ood", "folder:b", "--iw_samples", "0") == 0
        assert main(["evaluate", "--model", str(model), "--dataset", "b", "--split", "train",
                     "--iw_samples", "0", "--cpu", "--quiet"]) == 0  # fmt: skip
    for where in ("x", "y"):
        tag = f"folder_{tmp_path / where / 'b'}".replace("/", "_")
        (report,) = model.glob(f"score-mnist-test-vs-{tag}.json")
        assert json.loads(report.read_text())["out_of_distribution"]["images"] == 10
        (evaluated,) = model.glob(f"eval-{tag}-train*.json")
        assert json.loads(evaluated.read_text())["dataset"] == f"folder:{tmp_path / where / 'b'}"


def test_exclude_class_on_a_dataset_without_labels_is_one_line(mnist_dir, tmp_path, capsys):
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(20):
        Image.new("L", (28, 28), 10 * i).save(folder / f"i{i:02d}.png")
    args = ["train", "--dataset", f"folder:{folder}", "--run_dir", str(tmp_path / "run"),
            "--dry_run", "--quiet", "--cpu", "--exclude_class", "1"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "--exclude_class needs a dataset with classes" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ood", "cifar-10", "--ood_class", "3"], "not both"),
        (["--ood_class", "dog"], "--ood_class: unknown class 'dog'"),
        (["--ood", "folder:/no/such/folder"], "image folder /no/such/folder does not exist"),
        (["--ood", "folder:/etc/passwd"], "/etc/passwd is a file, not a folder"),
        (["--ood", "celeb-a"], "channels"),
        (["--out", "scores.txt"], "must end in .csv or .json"),
        (["--fpr", "1.5"], "--fpr must be a number above 0 and below 1"),
        (["--fpr", "0"], "--fpr must be a number above 0 and below 1, got 0"),
        (["--figure", "roc.png"], "--figure draws the ROC of the scores against out-of-dis"),
    ],
)
def test_score_errors_are_one_line(labelled, tmp_path, capsys, flags, message):
    model = black_model(tmp_path / "m")
    assert score(model, labelled, *flags) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_score_refuses_an_unwritable_out_and_a_conditional_model(labelled, tmp_path, capsys):
    model = black_model(tmp_path / "m")
    (tmp_path / "file").write_text("in the way")
    assert score(model, labelled, "--out", str(tmp_path / "file" / "s.csv")) == 1
    err = capsys.readouterr().err
    assert "cannot be written" in err and err.count("\n") == 1
    assert score(model, labelled, "--out", str(model / "config.json")) == 1
    assert "will not write over" in capsys.readouterr().err
    from PIL import Image

    Image.new("L", (2, 2)).save(tmp_path / "s.png")  # the user's picture where --out's goes
    assert score(model, labelled, "--out", str(tmp_path / "s.csv")) == 1
    err = capsys.readouterr().err  # no --figure was given: the flag it names is --out's
    assert f"the picture of --out {tmp_path / 's.png'} exists and is not one of" in err
    conditional = black_model(tmp_path / "c", conditional=True)
    assert score(conditional, labelled, "--out", str(tmp_path / "c.json")) == 1
    err = capsys.readouterr().err
    assert "score needs an unconditional model" in err and err.count("\n") == 1
    assert not (tmp_path / "c.json").exists()


def test_ood_class_warns_when_the_model_was_trained_on_that_class(labelled, tmp_path, caplog):

    model = black_model(tmp_path / "m")
    with caplog.at_level(logging.WARNING):
        assert score(model, labelled, "--ood_class", "3", "--out", str(tmp_path / "a.json")) == 0
    assert "trained on class 3 '3'" in caplog.text
    caplog.clear()
    config = json.loads((model / "config.json").read_text())
    config["train"] = {"exclude_class": [3]}  # as a run with --exclude_class 3 records it
    (model / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        assert score(model, labelled, "--ood_class", "3", "--out", str(tmp_path / "b.json")) == 0
    assert "trained on class" not in caplog.text


def test_ood_images_of_the_model_s_own_dataset_are_warned_of(labelled, tmp_path, caplog):

    from fakedata import write_folder

    model = black_model(tmp_path / "m")  # trained on mnist
    mine = f"folder:{write_folder(tmp_path / 'mine', n=20, gray=True)}"
    args = ["--dataset", mine, "--ood", "mnist", "--out", str(tmp_path / "a.json")]
    with caplog.at_level(logging.WARNING):
        assert score(model, labelled, *args) == 0
    assert "--ood mnist is the dataset the model was trained on" in caplog.text
    caplog.clear()
    folder = tmp_path / "white"
    folder.mkdir()
    for i in range(12):
        Image.new("L", (28, 28), 255).save(folder / f"w{i:02d}.png")
    with caplog.at_level(logging.WARNING):
        assert score(model, labelled, "--ood", f"folder:{folder}", "--out",
                     str(tmp_path / "b.json")) == 0  # fmt: skip
    assert "the dataset the model was trained on" not in caplog.text


def test_a_score_of_the_first_images_is_not_named_as_the_whole_split_s(labelled, tmp_path):
    model = black_model(tmp_path / "m")
    assert score(model, labelled, "--nimages", "7") == 0
    written = sorted(p.name for p in model.glob("score-*"))
    assert written == ["score-mnist-test-first7.json"], written
    assert len(json.loads((model / written[0]).read_text())["images"]) == 7


def test_a_second_score_of_a_run_replaces_its_own_picture_and_csv(labelled, tmp_path):
    model = black_model(tmp_path / "m")
    for _ in range(2):  # the picture beside the scores is score's own, written again
        assert score(model, labelled, "--ood_class", "3") == 0
        assert score(model, labelled, "--ood_class", "3", "--out", str(model / "score-x.csv")) == 0
    written = sorted(p.name for p in model.glob("score-*"))
    assert written == ["score-mnist-test-ood-class-3.json", "score-mnist-test-ood-class-3.png",
                       "score-x.csv", "score-x.png", "score-x.summary.json"], written  # fmt: skip
    epoch = model / "checkpoints" / "epoch_001.safetensors"  # a weights file in a run
    epoch.parent.mkdir()
    epoch.write_bytes((model / "model.safetensors").read_bytes())
    for _ in range(2):  # its reports lie beside it, named after it
        assert score(epoch, labelled, "--ood_class", "3") == 0
    written = sorted(p.name for p in epoch.parent.glob("epoch_001.score-*"))
    assert written == ["epoch_001.score-mnist-test-ood-class-3.json",
                       "epoch_001.score-mnist-test-ood-class-3.png"], written  # fmt: skip


def test_the_score_picture_names_each_histogram_s_score_and_unit(labelled, tmp_path, monkeypatch):
    from torch_vae.analysis import figures
    from torch_vae.evaluation.anomaly import HELP

    figs = []
    monkeypatch.setattr(figures, "_save", lambda fig, out: figs.append(fig) or out)
    model = black_model(tmp_path / "m")
    assert score(model, labelled, "--out", str(tmp_path / "s.json"), "--ood_class", "0") == 0
    (fig,) = figs
    labels = [ax.get_xlabel() for ax in fig.axes[1:]]  # the histograms, below the ROC curves
    assert labels == [HELP[n] for n in ("neg_elbo", "recon", "neg_elbo_ic")]
    assert "reconstruction error (MSE per pixel)" in labels


def test_ood_of_the_dataset_scored_as_in_distribution_is_refused(labelled, tmp_path, capsys):
    from fakedata import write_folder

    model = black_model(tmp_path / "m")  # trained on mnist
    folder = f"folder:{write_folder(tmp_path / 'mine', n=20, gray=True)}"
    for flags in (["--dataset", folder, "--ood", folder], ["--ood", "mnist"]):
        out = tmp_path / "s.json"
        assert score(model, labelled, *flags, "--out", str(out)) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"torch-vae: error: --ood {flags[-1]} is the dataset scored as "
                       "in-distribution (--dataset, by default the model's): its images cannot "
                       "be told from themselves; pass other images as --ood, or --ood_class for "
                       "one of its classes"]  # fmt: skip
        assert not out.exists()


def test_score_split_val_scores_the_images_the_run_held_out(labelled, train_tiny, tmp_path,
                                                             capsys, monkeypatch):  # fmt: skip
    from torch_vae.cli import score as score_cli
    from torch_vae.data.splits import recorded_rows

    run = train_tiny(tmp_path / "run", "--val_images", "8")
    config = json.loads((run / "config.json").read_text())
    fit, val = recorded_rows(40, config)
    calibrated = {}
    real = score_cli.calibrate_sigma

    def calibrate(model, images, device, seed):
        calibrated["n"] = len(images)
        return real(model, images, device, seed=seed)

    monkeypatch.setattr(score_cli, "calibrate_sigma", calibrate)
    out = tmp_path / "val.json"
    assert score(run, labelled, "--split", "val", "--out", str(out)) == 0
    report = json.loads(out.read_text())
    rows = report["images"]
    assert report["split"] == "val" and report["in_distribution"]["name"] == "mnist val"
    assert [r["index"] for r in rows] == val.tolist() and {r["split"] for r in rows} == {"train"}
    assert [r["label"] for r in rows] == [i % 10 for i in val.tolist()]
    assert calibrated["n"] == len(fit) == 40 - len(val)  # sigma from the other training images
    # a class of the validation images as out-of-distribution: both sets from them alone
    c = int(val[0]) % 10
    assert score(run, labelled, "--split", "val", "--ood_class", str(c), "--out", str(out)) == 0
    rows = json.loads(out.read_text())["images"]
    assert sorted(r["index"] for r in rows) == sorted(val.tolist())
    assert {r["label"] for r in rows if r["source"] == "ood"} == {c}
    # a run that held none out: one line, before any image is read
    none = train_tiny(tmp_path / "none", "--val_images", "0")
    capsys.readouterr()
    monkeypatch.setattr(score_cli, "split_images", lambda *a: pytest.fail("images read"))
    assert score(none, labelled, "--split", "val") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"torch-vae: error: --split val: the run of {none} held out no validation "
                   "images (--val_images 0, or too few images); use --split test"]  # fmt: skip


def test_an_ood_folder_inside_the_training_folder_is_warned_of(tmp_path, caplog):
    from fakedata import write_folder

    folder = tmp_path / "shapes"
    for name in ("circles", "squares"):
        write_folder(folder / name, n=12, gray=True, seed=len(name))
    config = ModelConfig(arch="dcgan", image_size=16, depth=2, max_filters=8, latent_dims=2)
    model = VAE(config).save_pretrained(tmp_path / "m", dataset=f"folder:{folder}")
    other = write_folder(tmp_path / "other", n=12, gray=True, seed=5)
    args = ["score", "--model", str(model), "--cpu", "--quiet", "--data_dir", str(tmp_path)]
    with caplog.at_level(logging.WARNING, logger="torch_vae"):
        assert main([*args, "--ood", f"folder:{folder / 'circles'}",
                     "--out", str(tmp_path / "a.json")]) == 0  # fmt: skip
    said = f"--ood {(folder / 'circles').resolve()} and the image folder {folder.resolve()} the "
    assert said + "model was trained on hold one another" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="torch_vae"):  # images of elsewhere: none
        assert main([*args, "--ood", f"folder:{other}", "--out", str(tmp_path / "b.json")]) == 0
    assert "hold one another" not in caplog.text


def test_score_split_train_says_it_scores_the_held_out_images_too(labelled, train_tiny, tmp_path,
                                                                   caplog):  # fmt: skip
    run = train_tiny(tmp_path / "run", "--val_images", "8")
    held = json.loads((run / "config.json").read_text())["split"]["validation_images"]
    out = ["--out", str(tmp_path / "s.json"), "--iw_samples", "0"]
    with caplog.at_level(logging.INFO, logger="torch_vae"):
        assert score(run, labelled, "--split", "train", *out) == 0
    assert (f"--split train is the whole training split: the {held} validation images the run "
            "held out are scored with the images it trained on (--split val scores them "
            "alone)") in caplog.text  # fmt: skip
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="torch_vae"):
        assert score(run, labelled, "--split", "test", *out) == 0
    assert "the whole training split" not in caplog.text


def test_few_in_distribution_images_get_a_rough_auroc_warning(labelled, tmp_path, caplog,
                                                              monkeypatch):  # fmt: skip
    """18 in-distribution images (the tiny test split without class 3): an FPR moves in
    steps of 1/18, and --fpr 0.05 lets none of them above the threshold, which is then the
    highest in-distribution score: said, as evaluate says its few images' standard error."""
    from torch_vae.cli import score as score_cli

    model = black_model(tmp_path / "m")
    flags = ["--ood_class", "3", "--out", str(tmp_path / "s.json")]
    with caplog.at_level(logging.WARNING, logger="torch_vae"):
        assert score(model, labelled, *flags, "--fpr", "0.05") == 0
    assert (
        "the AUROC and the thresholds rest on 18 in-distribution images, rough: the "
        "false-positive rate moves in steps of 1/18, and --fpr 0.05 lets 0 of them score "
        "above the threshold (it is the highest in-distribution score)"
    ) in caplog.text
    report = json.loads((tmp_path / "s.json").read_text())
    inlier = [r for r in report["images"] if r["source"] == "in"]
    top = max(r["recon"] for r in inlier)
    assert report["scores"]["recon"]["threshold"] == pytest.approx(top, rel=1e-6)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="torch_vae"):
        assert score(model, labelled, *flags, "--fpr", "0.2") == 0
    assert "--fpr 0.2 lets 3 of them score above the threshold;" in caplog.text
    caplog.clear()
    monkeypatch.setattr(score_cli, "FEW_IMAGES", 18)
    with caplog.at_level(logging.WARNING, logger="torch_vae"):
        assert score(model, labelled, *flags) == 0
    assert "rest on 18 in-distribution images" not in caplog.text

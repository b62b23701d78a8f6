"""The picture commands (interpolate, traverse, manifold, embed, plot) and the training curves
that training draws."""

import ast
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fakedata
import torch_vae
from torch_vae import VAE, ModelConfig
from torch_vae.analysis import figures as plots
from torch_vae.cli import main
from torch_vae.training import TrainConfig, loop
from torch_vae.training.rundir import read_metrics


@pytest.fixture
def model(tmp_path):
    """An untrained MNIST-shaped model (latent 3, 32x32): pictures need no training."""
    torch.manual_seed(0)
    cfg = ModelConfig(latent_dims=3, max_filters=16, image_size=32, arch="dcgan", depth=3)
    return VAE(cfg).save_pretrained(tmp_path / "model", dataset="mnist")


def picture(path):
    with Image.open(path) as img:
        return img.size, getattr(img, "n_frames", 1)


def test_training_draws_its_curves(train_tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(loop._drawing, "seconds", 0.0)  # drawing is free: due after every epoch
    run = train_tiny(tmp_path / "run", "--epochs", "1")
    assert not (run / "images" / "curves.png").exists()  # one epoch: a point, not a curve
    run = train_tiny(tmp_path / "run2", "--epochs", "2")
    assert picture(run / "images" / "curves.png")[0][0] > 500


def test_picture_commands(model, labelled, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out, common = tmp_path / "pics", ["--model", str(model), "--data_dir", str(labelled)]
    assert main(["interpolate", *common, "--outdir", str(out), "--index", "3", "5",
                 "--steps", "4", "--method", "slerp"]) == 0  # fmt: skip
    # a strip of the 4 steps between the two originals, enlarged twice (32-pixel images) under
    # its title; the animation goes there and back
    (w, h), _ = picture(out / "interpolate.png")
    assert w == 2 * (4 * 34 + 2 + 2 * (36 + 8)) and 2 * (32 + 4) < h <= 2 * (32 + 4) + 16
    assert picture(out / "interpolate.gif")[0] == (128, 128)  # enlarged to at least 128
    assert "4 slerp steps between images 3 and 5 of the test split of mnist" in caplog.text
    for args in (
        ["traverse", "--index", "2", "--steps", "5"],
        ["manifold", "--grid", "4"],
        ["embed"],
    ):
        assert main([*args, *common, "--outdir", str(out), "--quiet"]) == 0
        assert picture(out / f"{args[0]}.png")[0][0] > 300
    runs = [tmp_path / "a" / "run", tmp_path / "b" / "run"]  # alike names: labelled by path
    for i, run in enumerate(runs):
        run.mkdir(parents=True)
        lines = [{"epoch": e, "train_loss": 9 - e - i, "test_loss": 9.5 - e} for e in (1, 2, 3)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main(["plot", *map(str, runs), "--out", str(out / "c.png")]) == 0
    assert picture(out / "c.png")[0][0] > 500
    assert plots.run_labels(runs) == [str(r) for r in runs]


def test_interpolate_between_image_files_and_random_codes(model, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.fromarray(fakedata.blobs(1, 50, 3, 1)[0]).save(a)  # RGB, to the model's grayscale
    Image.fromarray(fakedata.blobs(1, 40, 1, 2)[0, :, :30, 0]).save(b)  # not square
    out = tmp_path / "i"
    assert main(["interpolate", "--model", str(model), "--images", str(a), str(b),
                 "--outdir", str(out), "--quiet"]) == 0  # fmt: skip
    assert 72 < picture(out / "interpolate.png")[0][1] <= 72 + 16  # enlarged, titled
    assert main(["interpolate", "--model", str(model), "--random", "--seed", "3",
                 "--outdir", str(out), "--quiet", "--steps", "3"]) == 0  # fmt: skip
    (w, h), _ = picture(out / "interpolate.png")
    assert w == 2 * (3 * 34 + 2) and 72 < h <= 72 + 16  # no originals
    with Image.open(out / "interpolate.png") as img:  # the title's dark text above the strip
        assert np.asarray(img.convert("L"))[: h - 72].min() < 100


BAD = [
    (["interpolate", "--index", "0", "99"], "--index 99 is out of range: the test split"),
    (["interpolate", "--images", "nope.png", "b.png"], "cannot read image nope.png"),
    (["interpolate", "--steps", "1"], "--steps must be an integer from 2 to 256"),
    (["interpolate", "--random", "--index", "0", "1"], "not --random and --index"),
    (["interpolate", "--images", "a.png", "b.png", "--index", "0", "1"], "--images and --index"),
    (["traverse", "--index", "20"], "--index 20 is out of range"),
    (["manifold", "--grid", "1"], "--grid must be an integer from 2 to 100"),
    (["manifold", "--nimages", "1"], "--nimages must be 0 (all) or at least 2"),
    (["traverse", "--steps", "1"], "--steps must be an integer from 2 to"),
    (["embed", "--method", "umap"], "umap-learn"),
]


def test_bad_input_is_one_line(model, mnist_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # as if umap-learn were not installed
    for args, message in BAD:
        rc = main([*args, "--model", str(model), "--data_dir", str(mnist_dir), "--quiet"])
        err = capsys.readouterr().err
        assert rc in (1, 2) and message in err and "Traceback" not in err, (args, err)


def test_plot_refuses_what_is_not_a_run(tmp_path, capsys):
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 1
    assert "has no metrics.jsonl" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nope"), "--out", str(tmp_path / "c.png")]) == 1
    assert f"{tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    # a run in its first epoch: a run, whose curves have not begun
    from torch_vae.training.rundir import write_run_config

    write_run_config(tmp_path, ModelConfig(), TrainConfig())
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 1
    assert "has no metrics.jsonl yet: its run is in its first epoch" in capsys.readouterr().err


def test_plot_refuses_a_run_without_an_epoch_s_losses(tmp_path, capsys):
    for text in ("", "not json\n", '{"epoch": 1, "foo": 2}\n', '{"step": 5, "train_loss": 3}\n'):
        (tmp_path / "metrics.jsonl").write_text(text)
        assert main(["plot", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 1
        assert "holds no epoch's losses yet" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 3}\n')
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 0


def test_embed_without_labels_is_uncoloured(model, mnist_dir, tmp_path, caplog, monkeypatch):
    # the fake MNIST has no label files and they cannot be downloaded: a warning, a plain map
    monkeypatch.setenv("TORCH_VAE_MIRROR", "http://127.0.0.1:9")  # nothing listens there
    assert main(["embed", "--model", str(model), "--data_dir", str(mnist_dir),
                 "--outdir", str(tmp_path), "--quiet"]) == 0  # fmt: skip
    assert (tmp_path / "embed.png").is_file()
    assert "no class colours" in caplog.text and "train-labels-idx1-ubyte.gz" in caplog.text


def test_embed_of_a_folder_without_subfolders_warns_that_it_has_no_labels(model, tmp_path, caplog):
    from fakedata import write_folder

    folder = write_folder(tmp_path / "flat", n=12, gray=True)  # no subfolders: no classes
    assert main(["embed", "--model", str(model), "--dataset", f"folder:{folder}", "--split",
                 "train", "--outdir", str(tmp_path / "o"), "--quiet"]) == 0  # fmt: skip
    assert (tmp_path / "o" / "embed.png").is_file()
    assert f"no class colours: folder:{folder} has no labels" in caplog.text


def test_the_curves_of_a_finished_run_end_at_its_last_epoch(train_tiny, tmp_path, monkeypatch):
    """Curves drawn every other epoch left a 3-epoch run's picture at epoch 2; the last epoch
    draws them again where an earlier one drew them."""
    drawn = []
    real = loop.figures.plot_curves
    monkeypatch.setattr(
        loop.figures,
        "plot_curves",
        lambda runs, *a, **k: drawn.append(len(runs[0])) or real(runs, *a, **k),
    )
    monkeypatch.setattr(loop, "curves_due", lambda epoch, seconds: epoch == 2)
    run = train_tiny(tmp_path / "run", "--epochs", "3")
    assert drawn == [2, 3] and (run / "images" / "curves.png").is_file()
    drawn.clear()  # --max_steps ends the run in its third epoch: drawn there too
    train_tiny(tmp_path / "cut", "--epochs", "3", "--max_steps", "7")  # 3 steps an epoch
    assert drawn == [2, 3]
    drawn.clear()
    monkeypatch.setattr(loop, "curves_due", lambda epoch, seconds: False)
    train_tiny(tmp_path / "never", "--epochs", "3")  # never due (a test's tiny epochs): none
    assert drawn == [] and not (tmp_path / "never" / "images" / "curves.png").exists()


def test_curves_of_few_epochs_tick_each_epoch_and_mark_training_and_held_out_apart(
    tmp_path, monkeypatch
):
    """A one-epoch run's curves were two dots alike at x = 0.96...1.04: each epoch is a tick
    now, training a dot and held out a cross."""
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: figs.append(fig) or out)
    row = {"epoch": 1, "train_loss": 50.0, "train_recon": 45.0, "train_kl": 5.0,
           "val_loss": 40.0, "val_recon": 36.0, "val_kl": 4.0}  # fmt: skip
    plots.plot_curves([[row]], ["run"], tmp_path / "c.png")
    plots.plot_curves(
        [[row, {**row, "epoch": 2}, {**row, "epoch": 3}]], ["run"], tmp_path / "d.png"
    )
    for fig, epochs in zip(figs, ([1], [1, 2, 3]), strict=True):
        loss = fig.axes[0]
        assert list(loss.get_xticks()) == epochs
        assert [line.get_marker() for line in loss.get_lines()] == ["o", "x"]
        assert "o: training" in loss.get_title() and "x: held out" in loss.get_title()
        assert [line.get_marker() for line in fig.axes[3].get_lines()] == ["x"]  # held out


def test_curves_are_due_by_share_of_time(monkeypatch):
    monkeypatch.setitem(loop._drawing, "seconds", 0.3)
    assert loop.curves_due(2, 60.0) and loop.curves_due(3, 60.0)  # long epochs: every epoch
    assert not loop.curves_due(1, 60.0)  # but the first: a single point
    assert [e for e in range(1, 41) if loop.curves_due(e, 0.6)] == [10, 20, 30, 40]
    assert not loop.curves_due(2, 0.2)  # a test's tiny run


def test_a_failed_drawing_does_not_stop_training(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(loop._drawing, "seconds", 0.0)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 2, "train_loss": 3}\nnot json\n')

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(plots, "plot_curves", broken)
    loop.write_curves(tmp_path, {"epoch": 2, "epoch_seconds": 1.0})
    assert "could not draw" in caplog.text and "no fonts" in caplog.text
    assert read_metrics(tmp_path) == [{"epoch": 2, "train_loss": 3}]


def test_matplotlib_is_imported_only_where_a_figure_is_drawn():
    """No module imports matplotlib at its top level (it takes about a second): commands that
    draw nothing never pay for it."""
    root = Path(torch_vae.__file__).parent
    top_level = []
    for path in root.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only, not function bodies
            names = [a.name for a in getattr(node, "names", [])] + [getattr(node, "module", "")]
            if isinstance(node, ast.Import | ast.ImportFrom) and any(
                (n or "").startswith("matplotlib") for n in names
            ):
                top_level.append(path.name)
    assert not top_level


def test_gif_goes_there_and_back(tmp_path):
    from torch_vae.analysis.pictures import write_gif as _write_gif

    frames = np.arange(4, dtype=np.uint8)[:, None, None, None] * np.ones((4, 20, 30, 3), np.uint8)
    _write_gif(frames * 60, tmp_path / "a.gif")
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.size == (30 * 7, 20 * 7) and gif.n_frames == 6 and gif.info["loop"] == 0
        seen = []
        for i in range(gif.n_frames):
            gif.seek(i)
            seen.append(int(np.asarray(gif.convert("L"))[0, 0]))
    assert seen == [0, 60, 120, 180, 120, 60]


def test_strip_and_tile_shapes():
    frames = np.zeros((3, 8, 8, 1), np.uint8)
    assert plots._tile(np.zeros((2, 3, 8, 8, 1), np.uint8)).shape == (18, 28, 1)
    from torch_vae.analysis.pictures import strip as _strip

    assert _strip(frames, None).shape == (12, 32, 1)
    assert _strip(frames, [frames[0], frames[1]]).shape == (12, 32 + 2 * (12 + 8), 1)


def test_a_small_manifold_picture_keeps_room_for_its_title_and_axes(tmp_path):
    """A 4x4 grid of 32x32 images drew a 310x270 picture whose title and axes' names were cut
    at both sides; the picture is now at least MIN_WIDTH inches each way, and the title and
    the names wrap to it."""
    from torch_vae.analysis import figures

    images = np.zeros((4, 4, 32, 32, 1), np.uint8)
    title = "run1: the plane of the two leading principal directions of the posterior means " * 2
    axes = ("first principal direction (standard deviations)",
            "second principal direction (standard deviations)")  # fmt: skip
    out = figures.plot_manifold(images, [0, 1, 2, 3], [0, 1, 2, 3], axes, title, tmp_path / "m.png")
    (width, height), _ = picture(out)
    side = int(figures.MIN_WIDTH * figures.DPI)
    assert width >= side and height >= side
    # nothing drawn touches the picture's left and right edges (a cut label would)
    with Image.open(out) as img:
        grey = np.asarray(img.convert("L"))
    assert (grey[:, :2] > 250).all() and (grey[:, -2:] > 250).all()


def test_the_anomaly_picture_draws_the_threshold_outside_the_scores_spread(tmp_path, monkeypatch):
    # a few images: the threshold at FPR 0.05 can lie beyond the scores' 99.5th percentile
    # that sets the histogram's range; the dashed line was then left out
    from torch_vae.analysis import figures
    from torch_vae.evaluation.anomaly import roc

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, out: drawn.append(fig) or out)
    inlier, outlier = np.array([0.1, 0.2, 0.3, 5.0]), np.array([0.4, 0.5])
    summary = {"recon": roc(inlier, outlier)}
    threshold = summary["recon"]["threshold"]
    assert threshold > np.percentile(np.r_[inlier, outlier], 99.5)
    figures.plot_anomaly(
        {"recon": (inlier, outlier)}, summary, ("in", "ood"), "t", tmp_path / "a.png"
    )
    histogram = drawn[0].axes[1]
    assert [list(line.get_xdata()) for line in histogram.lines] == [[threshold, threshold]]


def test_plot_refuses_to_draw_into_the_image_folder_a_run_trained_on(tmp_path, capsys):
    """Its PNG would become a training image: the run could no longer resume."""
    from fakedata import write_folder

    folder = write_folder(tmp_path / "imgs", n=20, gray=True)
    run = tmp_path / "run"
    assert main(["train", "--dataset", f"folder:{folder}", "--image_size", "16", "--depth", "2",
                 "--max_filters", "8", "--epochs", "1", "--run_dir", str(run), "--cpu",
                 "--quiet"]) == 0  # fmt: skip
    before = sorted(folder.rglob("*"))
    inside = folder / "curves.png"
    capsys.readouterr()
    assert main(["plot", str(run), "--out", str(inside)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"torch-vae: error: --out {inside} is inside the image folder "
                   f"{folder.resolve()}, whose images the model reads or was trained on: its "
                   "pictures would become images of it; pass a place outside it"]  # fmt: skip
    assert sorted(folder.rglob("*")) == before
    assert main(["plot", str(run), "--out", str(tmp_path / "curves.png")]) == 0


def test_traverse_of_an_image_labels_each_row_with_the_image_s_own_value(
    model, mnist_dir, tmp_path, monkeypatch
):
    from torch_vae import load_model
    from torch_vae.analysis import figures, latent
    from torch_vae.data import load_split

    seen = {}
    real = figures.plot_traversal

    def capture(images, dims, kl, active, values, title, out, own=None):
        seen.update(dims=dims, own=own, title=title)
        return real(images, dims, kl, active, values, title, out, own)

    monkeypatch.setattr(figures, "plot_traversal", capture)
    args = ["traverse", "--model", str(model), "--data_dir", str(mnist_dir), "--quiet",
            "--outdir", str(tmp_path / "t"), "--steps", "3"]  # fmt: skip
    assert main([*args, "--index", "2"]) == 0
    images = load_split("mnist", "test", 32, mnist_dir, progress=False)
    z = latent.encode_mean(load_model(model), images[2:3], None)[0]
    assert seen["own"] == pytest.approx(z[seen["dims"]].tolist())
    assert "the others kept at the code of test image 2 (its own values beside the rows)" in (
        seen["title"].replace("\n", " ")
    )
    assert main(args) == 0  # the zero code: no image, no values of its own
    assert seen["own"] is None and "kept at the zero code" in seen["title"]


def test_traversal_columns_are_labelled_with_their_values_unrounded():
    from torch_vae.analysis.figures import value_label

    values = torch.linspace(-3, 3, 9).tolist()  # traverse's --span 3 --steps 9
    assert [value_label(v) for v in values] == [
        "-3", "-2.25", "-1.5", "-0.75", "+0", "+0.75", "+1.5", "+2.25", "+3"]  # fmt: skip
    assert [value_label(v) for v in torch.linspace(-2, 2, 7).tolist()] == [
        "-2", "-1.33", "-0.667", "+0", "+0.667", "+1.33", "+2"]  # fmt: skip


def test_a_long_title_is_wrapped_not_cut_off():
    from torch_vae.analysis.figures import TITLE_CHARS_PER_INCH, _wrap

    name = "fashion-mnist_filters_0016_dims_0008_with_a_very_long_name"
    title = _wrap(f"{name} (latent 8): posterior means of 500 test images\nsecond line", 6.0)
    lines = title.split("\n")
    assert len(lines) >= 3 and max(map(len, lines)) <= 6 * TITLE_CHARS_PER_INCH
    assert title.replace("\n", " ").startswith(name) and lines[-1] == "second line"


def test_an_epoch_picture_shows_held_out_images_spread_over_the_split():
    """The first 32 of a folder's validation images were of its first classes (sorted by
    subfolder): the picture takes them evenly from the whole split."""
    from torch_vae.analysis.pictures import N_PICTURE, picture_rows

    rows = picture_rows(1000).tolist()
    assert len(rows) == N_PICTURE == len(set(rows)) and rows[0] == 0 and rows[-1] >= 1000 - 32
    assert all(30 <= b - a <= 32 for a, b in zip(rows, rows[1:], strict=False))
    assert picture_rows(5).tolist() == [0, 1, 2, 3, 4] and picture_rows(0).tolist() == []
    assert picture_rows(N_PICTURE).tolist() == list(range(N_PICTURE))

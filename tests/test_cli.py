import dataclasses
import hashlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from runs import TINY
from torch_vae import VAE, ModelConfig, TorchVaeError, save_model
from torch_vae.cli import main
from torch_vae.io.files import file_sha256


def test_train_writes_run_folder(trained):
    files = {p.relative_to(trained).as_posix() for p in trained.rglob("*") if p.is_file()}
    # the curves are drawn when the drawing is cheap beside the epochs (training.loop.curves_due),
    # which for these tiny epochs depends on the machine's load
    files.discard("images/curves.png")
    assert files == {
        "config.json",
        "model.safetensors",
        "ckpt.pt",
        "metrics.jsonl",
        "checkpoints/epoch_001.safetensors",
        "checkpoints/epoch_002.safetensors",
        "images/epoch_001.png",
        "images/epoch_002.png",
    }
    lines = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert lines[0]["step"] == 3 and lines[1]["step"] == 6  # 40 images, batch 16
    for key in ("train_loss", "val_loss", "val_recon", "val_kl", "val_mse"):
        assert np.isfinite(lines[1][key])
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["model"]["latent_dims"] == 3 and cfg["train"]["dataset"] == "mnist"


def _pngs(folder, pattern):
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob(pattern))]).astype(int)


def test_bf16_reconstruct_and_generate_stay_close_to_fp32(trained, mnist_dir, tmp_path):
    """--precision bf16 for inference: the same files, pixels within a few grey levels of
    fp32, and not simply the fp32 result (the flag reaches the model)."""
    common = ["--model", str(trained), "--data_dir", str(mnist_dir), "--quiet"]
    got = {}
    for precision in ("fp32", "bf16"):
        rec, gen = tmp_path / f"rec-{precision}", tmp_path / f"gen-{precision}"
        flag = ["--precision", precision]
        assert main(["reconstruct", *common, "--rec_testdata", "--outdir", str(rec), *flag]) == 0
        assert main(["generate", *common[:2], "--nsamples", "20", "--outdir", str(gen), *flag]) == 0
        got[precision] = (_pngs(rec, "rec_*.png"), _pngs(gen, "sample_*.png"))
    for a, b in zip(got["fp32"], got["bf16"], strict=True):
        assert a.shape == b.shape
        diff = np.abs(a - b)
        assert diff.max() <= 3 and diff.mean() < 0.5
        assert diff.max() > 0


def test_reconstruct_and_generate_need_only_model(trained, mnist_dir, tmp_path):
    rec = tmp_path / "rec"
    assert (
        main(
            [
                "reconstruct",
                "--model",
                str(trained),
                "--rec_testdata",
                "--outdir",
                str(rec),
                "--data_dir",
                str(mnist_dir),
                "--quiet",
            ]
        )
        == 0
    )
    pairs = sorted(rec.glob("rec_*.png"))
    assert len(pairs) == 20
    assert Image.open(pairs[0]).size == (32 * 2 + 2, 32)
    # all.png: the grid of the pairs under a caption that says which is which
    from torch_vae.io.png import grid

    overview = np.asarray(Image.open(rec / "all.png"))
    tiles = grid(np.stack([np.asarray(Image.open(p))[..., None] for p in pairs]), nrow=4)[..., 0]
    caption = overview.shape[0] - tiles.shape[0]
    assert 8 <= caption <= 16 and np.array_equal(overview[caption:], tiles)
    assert (overview[:caption] < 128).any()  # the caption's text
    out = tmp_path / "gen"
    assert (
        main(
            [
                "generate",
                "--model",
                str(trained / "model.safetensors"),
                "--nsamples",
                "10",
                "--outdir",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert len(list(out.glob("sample_*.png"))) == 10
    grid = Image.open(out / "all.png")
    assert grid.size == (8 * 34 + 2, 2 * 34 + 2) and grid.mode == "L"


def test_seeded_generation_is_deterministic(trained, tmp_path):
    def gen(seed, name):
        out = tmp_path / name
        assert (
            main(
                [
                    "generate",
                    "--model",
                    str(trained),
                    "--nsamples",
                    "5",
                    "--seed",
                    str(seed),
                    "--outdir",
                    str(out),
                    "--quiet",
                    "--batchsize",
                    "2",
                ]
            )
            == 0
        )
        return np.asarray(Image.open(out / "all.png"))

    assert np.array_equal(gen(7, "a"), gen(7, "b"))
    assert not np.array_equal(gen(7, "a"), gen(8, "c"))


def test_original_torch_vae_flags_are_accepted(trained, mnist_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "train",
                "--cpu",
                "--seed",
                "1",
                "--batchsize=16",
                "--max_filters=16",
                "--epochs=1",
                "--lr",
                "1e-3",
                "--dataset=mnist",
                "--latent_dims=2",
                "--image_size",
                "32",
                "--data_dir",
                str(mnist_dir),
                "--quiet",
                "--max_steps",
                "1",
            ]
        )
        == 0
    )
    assert (tmp_path / "runs" / "mnist_filters_0016_dims_0002" / "model.safetensors").exists()
    assert (
        main(
            [
                "reconstruct",
                "--cpu",
                "--model",
                str(trained),
                "--rec_testdata",
                "--dataset",
                "mnist",
                "--latent_dims",
                "3",
                "--max_filters",
                "16",
                "--outdir",
                "r",
                "--data_dir",
                str(mnist_dir),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "generate",
                "--cpu",
                "--seed",
                "0",
                "--model",
                str(trained),
                "--latent_dims=3",
                "--max_filters=16",
                "--nsamples=4",
                "--outdir=g",
                "--nimg_channels=1",
                "--quiet",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "r").glob("rec_*.png"))) == 20  # the tiny MNIST's test split
    assert len(list((tmp_path / "g").glob("sample_*.png"))) == 4


def test_default_run_dir_never_overwrites(labelled, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "train",
        "--dataset",
        "mnist",
        "--data_dir",
        str(labelled),
        "--epochs",
        "1",
        "--max_steps",
        "1",
        "--max_filters",
        "8",
        "--image_size",
        "16",
        "--depth",
        "2",
        "--quiet",
    ]
    assert main(args) == 0 and main(args) == 0
    # a class-conditional run of the same model is told apart by its name
    assert main([*args, "--conditional", "--arch", "dcgan"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "mnist_filters_0008_dims_0008",
        "mnist_filters_0008_dims_0008-2",
        "mnist_filters_0008_dims_0008_dcgan_cond",
    ]


def test_config_file_and_flag_precedence(mnist_dir, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(
        json.dumps({"latent_dims": 4, "max_filters": 8, "image_size": 16, "depth": 2, "epochs": 1})
    )
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--config",
                str(cfg),
                "--latent_dims",
                "5",
                "--dataset",
                "mnist",
                "--data_dir",
                str(mnist_dir),
                "--run_dir",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    model = json.loads((run / "config.json").read_text())["model"]
    assert model["latent_dims"] == 5 and model["max_filters"] == 8


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "torch_vae", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_command_process_ends_with_its_files_and_messages_written(tmp_path):
    """``python -m torch_vae`` ends without the interpreter's shutdown (cli.run): the command's
    files are complete and its last log line still reaches stderr."""
    model = tmp_path / "m.safetensors"
    save_model(VAE(ModelConfig(latent_dims=2, max_filters=8)), model)
    r = run_cli("generate", "--model", str(model), "--outdir", str(tmp_path / "s"),
                "--nsamples", "5", "--precision", "fp32")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "wrote 5 samples" in r.stderr.splitlines()[-1]
    assert len(list((tmp_path / "s").glob("sample_*.png"))) == 5
    assert Image.open(tmp_path / "s" / "all.png").size[1] > 0


def test_a_log_line_during_a_progress_bar_gets_its_own_line():
    """A warning while a bar is drawn (a download's retry) was written after the bar's text,
    on its line; it goes above the bar, which is drawn again below it."""
    import io

    from tqdm import tqdm

    from torch_vae.cli.main import _AboveBars, _Formatter

    stream = io.StringIO()
    handler = _AboveBars(stream)
    handler.setFormatter(_Formatter("%(message)s"))
    log = logging.getLogger("torch_vae.test_above_bars")
    log.addHandler(handler)
    log.propagate = False
    try:
        with tqdm(total=4, file=stream, desc="downloading", mininterval=0) as bar:
            bar.update(1)
            log.warning("the server closed the connection; retrying")
            bar.update(3)
    finally:
        log.removeHandler(handler)
    pieces = stream.getvalue().replace("\r", "\n").split("\n")
    line = "warning: the server closed the connection; retrying"
    assert line in [p.strip() for p in pieces], stream.getvalue()
    after = stream.getvalue().split(line, 1)[1]
    assert "downloading" in after  # the bar goes on below it


def test_warnings_on_the_console_start_with_warning(tmp_path):
    (tmp_path / "im").mkdir()
    for i in range(30):
        Image.new("L", (16, 16), 8 * i).save(tmp_path / "im" / f"{i:02d}.png")
    r = run_cli("train", "--dataset", "folder:im", "--dry_run", "--val_images", "100000",
                "--image_size", "16", "--max_filters", "8", "--depth", "2", "--latent_dims",
                "2", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    capped = [line for line in r.stderr.splitlines() if "--val_images 100000" in line]
    assert capped and capped[0].startswith("warning: --val_images 100000 is more than"), capped
    assert not [line for line in r.stderr.splitlines() if line.startswith("warning: warning")]


def error_line(stderr: str) -> str:
    """The CLI's single error line ('torch-vae: error: ...'), with no traceback around it."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("torch-vae: error: "), stderr
    return lines[0]


@pytest.mark.parametrize(
    "args,match",
    [
        (["train", "--latent_dims", "0"], "--latent_dims must be a positive integer"),
        (["train", "--dataset", "svhn"], "unknown dataset 'svhn'"),
        (["train", "--batchsize", "-1"], "--batchsize must be a positive integer"),
        (["train", "--image_size", "30"], "not divisible by 2\\*\\*depth"),
        (["generate", "--model", "nope", "--outdir", "x"], "model nope does not exist"),
        (["train", "--device", "cuda"], "no CUDA GPU is available"),
        (["train", "--device", "cuda:1"], "--device cuda:1 was asked for but no CUDA GPU"),
        (["train", "--config", "missing.json"], "cannot read --config"),
        (
            ["generate", "--model", "m", "--outdir", "x", "--nsamples", "99999999999999999999"],
            "--nsamples 99999999999999999999 is too large \\(at most 10000000\\)",
        ),
        (
            ["evaluate", "--model", "m", "--iw_samples", "100000000"],
            "--iw_samples 100000000 is too large \\(at most 100000\\)",
        ),
        (
            ["score", "--model", "m", "--iw_samples", "100000000"],
            "--iw_samples 100000000 is too large \\(at most 100000\\)",
        ),
        (
            ["sample-quality", "--model", "m", "--nsamples", "99999999999"],
            "--nsamples 99999999999 is too large \\(at most 100000\\)",
        ),
    ],
)
def test_bad_input_gives_one_line_error(args, match, tmp_path, monkeypatch, capsys):
    """In this process (test_command_process_ends_with_its_files_and_messages_written runs the
    command as its own process): exit status 1, one line on stderr, no traceback."""
    import re

    monkeypatch.chdir(tmp_path)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert re.search(match, error_line(err)) and "Traceback" not in err


def test_existing_run_dir_is_refused(trained, mnist_dir, capsys):
    before = (trained / "model.safetensors").read_bytes()
    capsys.readouterr()
    args = ["train", "--dataset", "mnist", "--run_dir", str(trained), "--data_dir", str(mnist_dir)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"run folder {trained} already exists and is not empty" in error_line(err)
    assert (trained / "model.safetensors").read_bytes() == before


def test_flags_or_dataset_not_matching_the_model_are_refused(
    trained, tmp_path, mnist_dir, register_md5s, capsys
):
    capsys.readouterr()
    out = str(tmp_path / "x")
    assert main(["generate", "--model", str(trained), "--latent_dims", "64", "--outdir", out]) == 1
    assert "--latent_dims 64 does not match the checkpoint, which has latent_dims=3" in error_line(
        capsys.readouterr().err
    )
    assert main(["generate", "--model", str(trained), "--nimg_channels", "3", "--outdir", out]) == 1
    assert "--nimg_channels 3 does not match the checkpoint, which has nimg_channels=1" in (
        error_line(capsys.readouterr().err)
    )
    assert not (tmp_path / "x").exists()
    import fakedata

    fakedata.write_cifar(mnist_dir / "cifar-10")
    register_md5s("cifar-10", mnist_dir / "cifar-10")
    capsys.readouterr()
    assert (
        main(
            [
                "reconstruct",
                "--model",
                str(trained),
                "--dataset",
                "cifar-10",
                "--outdir",
                str(tmp_path / "r"),
                "--data_dir",
                str(mnist_dir),
            ]
        )
        == 1
    )
    err = error_line(capsys.readouterr().err)
    assert "dataset cifar-10 has 3 channel(s) but the model expects 1" in err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("train", "reconstruct", "generate", "evaluate", "explore", "fit-sampler"):
        assert cmd in out


def _damage_inside_a_tensor(path):
    """Bytes in the middle of the file's largest tensor record inverted, its zip intact."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    at = info.header_offset
    name_len, extra_len = struct.unpack("<HH", raw[at + 26 : at + 30])
    start = at + 30 + name_len + extra_len + info.file_size // 2
    raw[start : start + 64] = bytes(b ^ 0xFF for b in raw[start : start + 64])
    path.write_bytes(raw)


def test_a_damaged_model_file_points_to_the_run_s_newest_checkpoint(trained, tmp_path, capsys):
    weights = trained / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    newest = sorted(trained.glob("checkpoints/epoch_*.safetensors"))[-1]
    # a sampler fitted to that checkpoint lies beside it, and is no epoch's weights
    (newest.parent / f"{newest.stem}.sampler-gaussian.safetensors").write_bytes(b"sampler")
    out = ["--outdir", str(tmp_path / "s"), "--nsamples", "2", "--cpu"]
    assert main(["generate", "--model", str(trained), *out]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(f"can stand in for it: {newest}"), err
    assert main(["generate", "--model", str(newest), "--sampler", "prior", *out]) == 0


def test_a_pickle_training_state_does_not_pass_on_advice_to_load_it_unsafely(
    trained, mnist_dir, capsys
):
    (trained / "ckpt.pt").write_bytes(b"\x80\x04garbage" * 10)
    assert main(["train", "--resume", str(trained), "--data_dir", str(mnist_dir), "--quiet"]) == 1
    err = error_line(capsys.readouterr().err)
    assert "(UnpicklingError: it is not a file of tensors that loads without running code" in err
    assert "weights_only" not in err


def test_an_empty_training_state_is_said_to_be_empty(trained, mnist_dir, capsys):
    (trained / "ckpt.pt").write_bytes(b"")
    assert main(["train", "--resume", str(trained), "--data_dir", str(mnist_dir), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ckpt.pt is corrupt or truncated (an empty file)" in err[0], err


@pytest.mark.parametrize("damage", ["truncated", "text", "inside"])
def test_a_damaged_training_state_names_the_weights_to_start_again_from(
    trained, mnist_dir, tmp_path, capsys, damage
):
    state = trained / "ckpt.pt"
    if damage == "truncated":
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    elif damage == "inside":  # torch.load reads it without a word: the checksum tells
        _damage_inside_a_tensor(state)
        torch.load(state, weights_only=True)
    else:
        state.write_text("not a training state\n")
    capsys.readouterr()
    assert main(["train", "--resume", str(trained), "--data_dir", str(mnist_dir), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is corrupt or truncated (" in err[0], err
    if damage == "inside":
        assert "(ValueError: its contents do not match their checksum)" in err[0], err
    newest = sorted(trained.glob("checkpoints/epoch_*.safetensors"))[-1]
    config = trained / "config.json"
    fix = f"start a new run from its newest weights: torch-vae train --config {config} --init_from"
    assert err[0].endswith(f"so the run cannot resume; {fix} {newest} (the run's flags; --epochs "
                           "for fewer epochs)"), err  # fmt: skip
    again = [
        "train",
        "--config",
        str(config),
        "--init_from",
        str(newest),
        "--quiet",
        "--epochs",
        "1",
        "--data_dir",
        str(mnist_dir),
        "--run_dir",
        str(tmp_path / "again"),
    ]
    assert main(again) == 0
    stored = json.loads((tmp_path / "again" / "config.json").read_text())["train"]
    assert stored["dataset"] == "mnist" and stored["init_from"] == str(newest)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["generate", "--model", "m", "--outdir", "o", "--nsamples", "abc"],
         "torch-vae generate: error: argument --nsamples: invalid int value: 'abc'"),
        (["fit-sampler", "--model", "m", "--store", "bf16"], "argument --store: invalid choice"),
        (["generate"], "the following arguments are required: --model, --outdir"),
        (["nosuch"], "torch-vae: error: argument COMMAND: invalid choice: 'nosuch'"),
        (["evaluate", "--model", "m", "--nosuch", "1"],
         "torch-vae evaluate: error: unrecognized arguments: --nosuch 1 (see torch-vae evaluate"),
        (["reconstruct", "--model", "m", "--outdir", "o", "--image_size", "64"],
         "unrecognized arguments: --image_size 64; --image_size is the model's own, recorded in "
         "its file: the command uses the model as it was trained (images at its --image_size)"),
    ],
)  # fmt: skip
def test_a_malformed_command_line_is_one_line_that_points_at_the_help(argv, says, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and err[0].endswith("--help)"), err
    assert err[0].startswith("torch-vae")


def test_a_run_s_config_json_as_config_trains_the_same_recipe(mnist_dir, tmp_path):
    base = ["train", "--dataset", "mnist", "--data_dir", str(mnist_dir), "--quiet"]
    first = tmp_path / "first"
    recipe = ["--arch", "dcgan", "--latent_dims", "3", "--max_filters", "8", "--image_size", "16",
              "--depth", "2", "--lr", "0.002", "--lr_schedule", "cosine", "--max_steps", "3",
              "--seed", "7", "--batchsize", "16"]  # fmt: skip
    assert main([*base, *recipe, "--run_dir", str(first)]) == 0
    again = tmp_path / "again"
    config = str(first / "config.json")
    assert main([*base, "--config", config, "--seed", "8", "--run_dir", str(again)]) == 0
    a, b = (json.loads((run / "config.json").read_text()) for run in (first, again))
    assert b["model"] == a["model"] and b["train"]["lr_schedule"] == "cosine"
    assert b["train"] == {**a["train"], "seed": 8}
    # another --image_size: the depth follows it (the run's 2 was chosen for 16 pixels); the
    # same size keeps it
    for size, depth in (("32", 3), ("16", 2)):
        run = tmp_path / f"size{size}"
        assert main([*base, "--config", config, "--image_size", size, "--run_dir", str(run)]) == 0
        assert json.loads((run / "config.json").read_text())["model"]["depth"] == depth


def _run_then_elsewhere(mnist_dir, tmp_path, monkeypatch):
    """A tiny run reading ``mnist_dir``, then the working folder another one, whose ./data
    holds nothing, with no $TORCH_VAE_DATA: (the run, that folder)."""
    run, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    assert main(["train", *TINY, "--data_dir", str(mnist_dir), "--max_steps", "2",
                 "--run_dir", str(run)]) == 0  # fmt: skip
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("TORCH_VAE_DATA", raising=False)
    return run, elsewhere


def test_a_run_s_config_reads_the_data_folder_the_run_read_unless_told_another(
    mnist_dir, tmp_path, monkeypatch
):
    first, elsewhere = _run_then_elsewhere(mnist_dir, tmp_path, monkeypatch)
    again = ["train", "--config", str(first / "config.json"), "--quiet", "--run_dir"]
    assert main([*again, str(tmp_path / "again")]) == 0
    assert not (elsewhere / "data").exists()  # neither downloaded nor cached here
    recorded = json.loads((tmp_path / "again" / "config.json").read_text())["data_dir"]
    assert recorded == str(mnist_dir)
    # --data_dir on the command line is the folder read
    mine = tmp_path / "mine"
    shutil.copytree(mnist_dir, mine)
    assert main([*again, str(tmp_path / "other"), "--data_dir", str(mine)]) == 0
    assert json.loads((tmp_path / "other" / "config.json").read_text())["data_dir"] == str(mine)


def test_commands_on_a_run_s_model_read_the_data_folder_the_run_read(
    mnist_dir, tmp_path, monkeypatch, caplog, capsys
):
    run, elsewhere = _run_then_elsewhere(mnist_dir, tmp_path, monkeypatch)
    monkeypatch.setattr("torch_vae.data.datasets.download", _no_download)
    caplog.set_level("INFO")
    evaluate = ["evaluate", "--model", str(run), "--iw_samples", "0", "--cpu"]
    assert main([*evaluate, "--report", str(tmp_path / "r.json")]) == 0
    assert f"data folder (downloads and caches): {mnist_dir}, the one the run used" in (caplog.text)
    assert not (elsewhere / "data").exists()  # neither downloaded nor cached here
    # $TORCH_VAE_DATA says another folder: that one is read (here: one without MNIST)
    monkeypatch.setenv("TORCH_VAE_DATA", str(tmp_path / "none"))
    capsys.readouterr()
    assert main([*evaluate, "--report", str(tmp_path / "r2.json")]) == 1
    assert f"no download in tests, into {tmp_path / 'none' / 'mnist'}" in capsys.readouterr().err


def test_a_command_on_the_model_of_a_run_that_is_training_says_so(
    trained, mnist_dir, tmp_path, caplog
):
    from torch_vae.training.rundir import RunLock

    evaluate = ["evaluate", "--model", str(trained), "--data_dir", str(mnist_dir), "--quiet",
                "--iw_samples", "0", "--report"]  # fmt: skip
    lock = RunLock(trained)  # as the training (or resuming) process holds it
    try:
        assert main([*evaluate, str(tmp_path / "during.json")]) == 0
    finally:
        lock.release()
    assert (f"the run in {trained} is training now: its model.safetensors holds epoch 2's "
            "weights of 2, and what this command measures") in caplog.text  # fmt: skip
    caplog.clear()
    assert main([*evaluate, str(tmp_path / "after.json")]) == 0  # it ended: nothing said
    assert "training now" not in caplog.text
    # the report names the weights it measured, which a run that trains on replaces
    report = json.loads((tmp_path / "during.json").read_text())
    assert report["model_sha256"] == file_sha256(trained / "model.safetensors")


def _no_download(url, md5, dest, *args, **kwargs):
    raise TorchVaeError(f"no download in tests, into {Path(dest).parent}")


def test_a_run_s_config_warns_when_its_initial_weights_changed(mnist_dir, tmp_path, caplog, capsys):
    base = ["train", "--dataset", "mnist", "--data_dir", str(mnist_dir), "--quiet", "--arch",
            "dcgan", "--latent_dims", "2", "--max_filters", "8", "--image_size", "16",
            "--depth", "2", "--max_steps", "2", "--batchsize", "16"]  # fmt: skip
    first, other, tuned = tmp_path / "first", tmp_path / "other", tmp_path / "tuned"
    assert main([*base, "--run_dir", str(first)]) == 0
    assert main([*base, "--seed", "1", "--run_dir", str(other)]) == 0
    assert main([*base, "--init_from", str(first), "--run_dir", str(tuned)]) == 0
    again = ["train", "--config", str(tuned / "config.json"), "--data_dir", str(mnist_dir),
             "--quiet", "--run_dir"]  # fmt: skip
    with caplog.at_level("WARNING", logger="torch_vae"):
        assert main([*again, str(tmp_path / "same")]) == 0
        assert "initial weights" not in caplog.text
        recorded = file_sha256(first / "model.safetensors")
        shutil.copyfile(other / "model.safetensors", first / "model.safetensors")
        # another --init_from on the command line: the recorded one does not matter
        assert main([*again, str(tmp_path / "mine"), "--init_from", str(other)]) == 0
        assert "initial weights" not in caplog.text
        assert main([*again, str(tmp_path / "changed")]) == 0
    now = file_sha256(first / "model.safetensors")
    assert (f"the run's initial weights {first / 'model.safetensors'} changed since it began "
            f"(SHA-256 {recorded[:12]}... then, {now[:12]}... now)") in caplog.text  # fmt: skip
    (first / "model.safetensors").unlink()  # gone: one line that says what to pass
    assert main([*again, str(tmp_path / "gone")]) == 1
    assert (
        f"the run began from the weights {first / 'model.safetensors'}, which cannot be read "
        "any more; pass --init_from" in error_line(capsys.readouterr().err)
    )


def test_config_given_a_run_folder_names_its_config_json(trained, capsys):
    assert main(["train", "--config", str(trained)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"a run's flags are in its config.json: --config {trained}/config.json")
    weights = trained / "model.safetensors"  # a binary file: said so, not a codec's error
    assert main(["train", "--config", str(weights)]) == 1
    assert f"--config {weights} is not a JSON text file (a binary file?)" in error_line(
        capsys.readouterr().err)  # fmt: skip


def test_a_resume_told_of_a_split_seed_the_run_has_none_of_says_so(trained, mnist_dir, capsys):
    resume = ["train", "--resume", str(trained), "--data_dir", str(mnist_dir), "--split_seed", "3"]
    assert main(resume) == 1
    assert f"--split_seed 3 does not match the run in {trained}, which has no split_seed;" in (
        error_line(capsys.readouterr().err))  # fmt: skip


def test_every_training_flag_reaches_the_run_config(mnist_dir, tmp_path):
    run = tmp_path / "run"
    flags = {
        "--lr_schedule": "cosine",
        "--kl_warmup_epochs": "0.5",
        "--weight_decay": "0.001",
        "--beta": "2.0",
        "--recon_loss": "bce",
        "--lr": "0.002",
        "--max_steps": "3",
        "--seed": "7",
    }
    args = ["train", "--dataset", "mnist", "--data_dir", str(mnist_dir), "--run_dir", str(run)]
    args += ["--latent_dims", "3", "--max_filters", "8", "--image_size", "16", "--depth", "2"]
    args += [x for kv in flags.items() for x in kv] + ["--quiet"]
    assert main(args) == 0
    stored = json.loads((run / "config.json").read_text())["train"]
    for flag, value in flags.items():
        assert str(stored[flag[2:]]) == value, flag


def test_dcgan_arch_trains_and_loads_from_its_run(mnist_dir, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--dataset", "mnist", "--data_dir", str(mnist_dir), "--run_dir", str(run)]
    args += ["--arch", "dcgan", "--latent_dims", "3", "--max_filters", "16", "--image_size", "32"]
    assert main([*args, "--epochs", "1", "--quiet"]) == 0
    model = json.loads((run / "config.json").read_text())["model"]
    assert model["arch"] == "dcgan" and model["depth"] == 3  # dcgan's default: 32 px to 4x4
    out = tmp_path / "samples"
    assert main(["generate", "--model", str(run), "--nsamples", "5", "--outdir", str(out)]) == 0
    assert len(list(out.glob("sample_*.png"))) == 5
    rec = tmp_path / "rec"
    assert main(["reconstruct", "--model", str(run), "--rec_testdata", "--nimages", "4",
                 "--outdir", str(rec), "--data_dir", str(mnist_dir)]) == 0  # fmt: skip
    assert len(list(rec.glob("rec_*.png"))) == 4


def test_init_from_starts_at_the_given_weights(trained, mnist_dir, tmp_path, capsys):
    from torch_vae import load_model

    base = ["train", "--dataset", "mnist", "--data_dir", str(mnist_dir), "--quiet"]
    # a learning rate too small to move the weights: the run ends where it started
    still = ["--epochs", "1", "--batchsize", "16", "--lr", "1e-12", "--weight_decay", "0"]
    run = tmp_path / "more"
    assert main([*base, *still, "--init_from", str(trained), "--run_dir", str(run)]) == 0
    start, end = load_model(trained), load_model(run)
    assert end.config == start.config  # latent 3, 16 filters, 32 px: taken from the model
    for (name, a), b in zip(start.named_parameters(), end.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    fresh = tmp_path / "fresh"
    flags = ["--latent_dims", "3", "--max_filters", "16", "--image_size", "32", "--depth", "3"]
    assert main([*base, *still, *flags, "--run_dir", str(fresh)]) == 0
    assert not torch.allclose(
        start.encoder.convs[0].weight, load_model(fresh).encoder.convs[0].weight
    )
    train_cfg = json.loads((run / "config.json").read_text())["train"]
    weights = trained / "model.safetensors"
    assert train_cfg["init_from"] == str(weights.resolve())
    assert train_cfg["init_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()

    capsys.readouterr()
    bad = [
        *base,
        "--init_from",
        str(trained),
        "--latent_dims",
        "5",
        "--run_dir",
        str(tmp_path / "x"),
    ]
    assert main(bad) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--latent_dims 5 does not match --init_from" in err[0], err
    assert main(["train", "--resume", str(run), "--init_from", str(trained), "--quiet"]) == 1
    assert "--init_from cannot be combined with --resume" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_init_from_refuses_weights_that_changed(trained, tmp_path):
    from torch_vae import TorchVaeError, load_model
    from torch_vae.training import TrainConfig
    from torch_vae.training.loop import run_plan as train_fn
    from torch_vae.training.plan import RunPlan

    model = load_model(trained)
    weights = str((trained / "model.safetensors").resolve())
    cfg = TrainConfig(dataset="mnist", epochs=1, init_from=weights, init_sha256="0" * 64)
    x = torch.zeros(4, 32, 32, 1, dtype=torch.uint8)
    with pytest.raises(TorchVaeError, match="changed since the run was set up"):
        train_fn(
            RunPlan(tmp_path / "new", model.config, cfg), x, x, torch.device("cpu"), progress=False
        )
    assert not (tmp_path / "new").exists()


def test_init_from_needs_as_many_channels(trained, tmp_path, capsys):
    folder = tmp_path / "colour"
    folder.mkdir()
    for i in range(12):
        Image.new("RGB", (32, 32), (20 * i, 90, 200)).save(folder / f"{i}.png")
    args = ["train", "--dataset", f"folder:{folder}", "--init_from", str(trained), "--quiet"]
    assert main([*args, "--run_dir", str(tmp_path / "ft"), "--data_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has 3 channel(s) but --init_from" in err[0], err
    assert not (tmp_path / "ft").exists()


def test_network_size_trains_evaluates_and_keeps_its_native_size(
    train_tiny, mnist_dir, tmp_path, capsys
):
    from torch_vae import load_model

    flags = ("--native_size", "28", "--network_size", "30", "--depth", "1", "--arch", "dcgan")
    run = train_tiny(tmp_path / "native", *flags)
    model = load_model(run)
    assert model.config.network_size == 30 and model.config.bottleneck_size == 15
    capsys.readouterr()
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(run), "--data_dir", str(mnist_dir), "--quiet",
                 "--iw_samples", "0", "--report", str(report)]) == 0  # fmt: skip
    assert "networks at 30x30 on the 28x28 originals" in capsys.readouterr().out
    assert json.loads(report.read_text())["network_size"] == 30
    # the weights are for 28x28 networks: fine-tuning cannot change the native size
    tune = tmp_path / "tuned"
    tune_flags = ["--init_from", str(run), "--native_size", "24", "--run_dir", str(tune)]
    assert main(["train", "--dataset", "mnist", "--data_dir", str(mnist_dir), "--quiet",
                 *tune_flags]) == 1  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "work on its --native_size 28 images" in err[0], err
    assert not tune.exists()
    # the same from Python, where the new model's config is given whole
    from torch_vae import TorchVaeError
    from torch_vae.training import TrainConfig
    from torch_vae.training.plan import plan_new

    other = dataclasses.replace(model.config, native_size=26)
    with pytest.raises(TorchVaeError, match=f"init_from {run} is another model: native_size 28 "
                       "there, 26 here$"):  # fmt: skip
        plan_new(other, TrainConfig(dataset="mnist"), tune, mnist_dir, run)
    assert not tune.exists()


def test_init_from_an_unconditional_model_with_conditional_names_what_differs(
    trained, labelled, tmp_path, capsys
):
    run = tmp_path / "cond"
    assert main(["train", "--dataset", "mnist", "--data_dir", str(labelled), "--init_from",
                 str(trained), "--conditional", "--run_dir", str(run), "--quiet"]) == 1  # fmt: skip
    said = error_line(capsys.readouterr().err)
    assert "are for another model: classes () there, 10 classes here" in said
    assert "cannot start from an unconditional model's weights" in said
    assert "Config(" not in said  # no dataclass dump


def test_native_size_trains_fine_tunes_and_checks_the_images(
    trained, train_tiny, mnist_dir, tmp_path, capsys
):
    from torch_vae import load_model

    # the tiny MNIST is 28x28, upsampled to 32x32 by the pipeline
    run = train_tiny(tmp_path / "native", "--native_size", "28", "--arch", "dcgan")
    assert load_model(run).config.native_size == 28
    assert json.loads((run / "config.json").read_text())["model"]["native_size"] == 28

    base = ["train", "--dataset", "mnist", "--data_dir", str(mnist_dir), "--quiet"]
    tune = tmp_path / "tuned"
    one = ["--epochs", "1", "--batchsize", "16"]
    assert main([*base, *one, "--init_from", str(trained), "--native_size", "28",
                 "--run_dir", str(tune)]) == 0  # fmt: skip
    start, tuned = load_model(trained), load_model(tune)
    assert start.config.native_size == 0 and tuned.config.native_size == 28
    assert dataclasses.replace(tuned.config, native_size=0) == start.config

    capsys.readouterr()
    wrong = tmp_path / "wrong"
    assert main([*base, *one, "--init_from", str(trained), "--native_size", "24",
                 "--run_dir", str(wrong)]) == 1  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "are not bilinear upsamplings of 24x24 images" in err[0], err
    assert not wrong.exists()
    assert main(["train", "--resume", str(run), "--native_size", "0", "--quiet"]) == 1
    assert "--native_size 0 does not match the run" in capsys.readouterr().err

    report = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(run), "--data_dir", str(mnist_dir), "--quiet",
                 "--iw_samples", "0", "--report", str(report)]) == 0  # fmt: skip
    assert "projected onto upsamplings of 28x28 images" in capsys.readouterr().out
    assert json.loads(report.read_text())["native_size"] == 28


def test_generate_replaces_an_earlier_run_s_images_only_once_the_new_ones_are_written(
    trained, tmp_path, monkeypatch
):
    from torch_vae.io import png

    out = tmp_path / "gen"
    gen = ["generate", "--model", str(trained), "--outdir", str(out), "--quiet", "--batchsize", "4"]
    assert main([*gen, "--nsamples", "6", "--seed", "1"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(before) == 7 and Image.open(out / "all.png").info["Software"] == "torch-vae"
    calls = []

    def stop_in_the_second_batch(self, images, paths):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(png.PngWriter, "submit", stop_in_the_second_batch)
    assert main([*gen, "--nsamples", "9", "--seed", "2"]) == 130  # Ctrl-C's exit
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # all kept, no stage left
    assert main([*gen, "--nsamples", "3", "--seed", "2"]) == 0  # torch-vae's all.png: replaced
    assert sorted(p.name for p in out.iterdir()) == [
        "all.png",
        *(f"sample_0000{i}.png" for i in range(3)),
    ]


def test_the_removal_of_an_earlier_command_s_pictures_is_counted_in_words(tmp_path, caplog):
    from torch_vae.analysis.pictures import clear_earlier

    for n in (1, 3):
        for i in range(n):
            (tmp_path / f"sample_{i:05d}.png").write_bytes(b"png")
        with caplog.at_level(logging.INFO, logger="torch_vae"):
            assert clear_earlier(tmp_path, "sample") == n
        files = "1 sample_*.png file" if n == 1 else "3 sample_*.png files"
        assert f"removed {files} an earlier torch-vae command wrote in {tmp_path}" in caplog.text
        caplog.clear()


def test_generate_and_reconstruct_refuse_a_user_s_all_png_before_the_work(
    trained, mnist_dir, tmp_path, capsys
):
    out = tmp_path / "mine"
    out.mkdir()
    Image.new("L", (4, 4)).save(out / "all.png")  # the user's own, no torch-vae Software text
    mine = (out / "all.png").read_bytes()
    gen = ["generate", "--model", str(trained), "--nsamples", "2", "--outdir", str(out)]
    rec = ["reconstruct", "--model", str(trained), "--rec_testdata", "--outdir", str(out),
           "--data_dir", str(mnist_dir)]  # fmt: skip
    for args in (gen, rec):
        assert main([*args, "--quiet"]) == 1
        said = capsys.readouterr().err
        assert (
            "all.png is not a picture this torch-vae wrote" in said
            and "nothing was written" in said
        )
    assert (
        sorted(p.name for p in out.iterdir()) == ["all.png"]
        and (out / "all.png").read_bytes() == mine
    )


def test_generate_and_reconstruct_keep_a_user_s_numbered_pngs_and_sweep_a_killed_run_s_stage(
    trained, mnist_dir, tmp_path, capsys
):
    """A user's own sample_00100.png (or rec_00042.png) in --outdir was deleted as "an earlier
    run's" image; now the command is refused before the work. A stage folder a killed run left
    (91 MB in the case reported) is removed by the next run."""
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("sample_00100.png", "rec_00042.png"):
        Image.new("L", (4, 4)).save(out / name)  # the user's, no torch-vae Software text
    gen = ["generate", "--model", str(trained), "--nsamples", "2", "--outdir", str(out)]
    rec = ["reconstruct", "--model", str(trained), "--rec_testdata", "--outdir", str(out),
           "--data_dir", str(mnist_dir), "--nimages", "2"]  # fmt: skip
    for args, name in ((gen, "sample_00100.png"), (rec, "rec_00042.png")):
        assert main([*args, "--quiet"]) == 1
        said = capsys.readouterr().err
        assert f"{name} in --outdir {out}: not pictures this torch-vae wrote" in said, said
        assert "nothing was written" in said
    assert sorted(p.name for p in out.iterdir()) == ["rec_00042.png", "sample_00100.png"]
    theirs = tmp_path / "theirs"
    killed = theirs / ".sample-partial-abc123"
    killed.mkdir(parents=True)
    (killed / "sample_00000.png").write_bytes(b"half")
    assert main([*gen[:-1], str(theirs), "--quiet"]) == 0
    assert sorted(p.name for p in theirs.iterdir()) == ["all.png", "sample_00000.png",
                                                        "sample_00001.png"]  # fmt: skip


def test_generate_refuses_a_run_s_own_folders_as_outdir(trained, tmp_path, capsys):
    """Samples went in beside the weights (--outdir RUN, RUN/checkpoints, RUN/images); a
    folder of the user's inside the run (RUN/samples, as the quickstart does) is fine."""
    gen = ["generate", "--model", str(trained), "--nsamples", "2", "--quiet", "--outdir"]
    for outdir, what in ((trained, "a model's run folder"),
                         (trained / "checkpoints", "the checkpoints folder of a model's run"),
                         (trained / "images", "the images folder of a model's run")):  # fmt: skip
        before = sorted(p.name for p in outdir.iterdir())
        assert main([*gen, str(outdir)]) == 1
        said = capsys.readouterr().err
        assert f"--outdir {outdir} is {what}" in said
        assert f"e.g. samples/{trained.name} (nothing was written)" in said  # not inside the run
        assert sorted(p.name for p in outdir.iterdir()) == before
    assert main([*gen, str(trained / "samples")]) == 0


def test_what_reading_the_flags_says_is_shown_by_the_command(data, tmp_path):
    """Lines logged while a --config file is read (before the command set up its logging)
    were lost: the data folder a run's config.json points at is said."""
    import os

    from test_distributed import SRC

    run = tmp_path / "run"
    assert main(["train", *TINY, "--data_dir", str(data), "--max_steps", "2",
                 "--run_dir", str(run)]) == 0  # fmt: skip
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("TORCH_VAE_DATA", None)
    cmd = [sys.executable, "-m", "torch_vae", "train", "--config", str(run / "config.json"),
           "--dry_run"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"data folder (downloads and caches): {data}, the one the run used" in done.stderr
    quiet = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=120)  # fmt: skip
    assert quiet.returncode == 0 and "reading the dataset" not in quiet.stderr


def test_a_command_on_images_of_another_dataset_than_the_model_s_says_so(tmp_path, caplog):
    from torch_vae import VAE, ModelConfig
    from torch_vae.cli.common import resolve_dataset

    model = VAE(ModelConfig(arch="dcgan", image_size=16, depth=2, max_filters=8))
    model.dataset = "mnist"
    with caplog.at_level(logging.INFO, logger="torch_vae"):
        assert resolve_dataset(model, "fashion-mnist", tmp_path / "m") == "fashion-mnist"
    assert "the images are of fashion-mnist; the model was trained on mnist" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="torch_vae"):
        assert resolve_dataset(model, None, tmp_path / "m") == "mnist"
    assert "trained on" not in caplog.text


def test_an_epoch_s_picture_is_titled_with_its_epoch_and_step(train_tiny, tmp_path, monkeypatch):
    from torch_vae.analysis import pictures

    titles, real = [], pictures.with_title
    monkeypatch.setattr(
        pictures, "with_title", lambda p, title: titles.append(title) or real(p, title)
    )
    train_tiny(tmp_path / "run", "--max_steps", "5")  # 3 steps an epoch: 3, then 2 of epoch 2
    assert titles == [
        "held-out image | reconstruction",
        "epoch 1, step 3: samples (fixed codes)",
        "held-out image | reconstruction",
        "epoch 2, step 5: samples (fixed codes)",
    ]


def test_reconstruct_nimages_above_the_split_says_it_takes_them_all(
    trained, mnist_dir, tmp_path, caplog
):
    out = tmp_path / "rec"
    args = ["reconstruct", "--model", str(trained), "--rec_testdata", "--nimages", "500",
            "--outdir", str(out), "--data_dir", str(mnist_dir)]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="torch_vae"):
        assert main(args) == 0
    assert "--nimages 500: the test split holds 20 images, all reconstructed" in caplog.text
    assert len(list(out.glob("rec_*.png"))) == 20

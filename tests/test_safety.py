"""No lost run, no stranger's program, no number that depends on the batch size: the cases a
hostile or careless user found, each as it was reproduced, and the rest of each kind."""

import json
import logging
import os
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torch_vae import VAE, ModelConfig, TorchVaeError
from torch_vae.cli import main

TINY = ["--latent_dims", "3", "--max_filters", "16", "--image_size", "32", "--depth", "3"]


def _train_args(run, data, *more):
    return ["train", "--dataset", "mnist", "--data_dir", str(data), "--run_dir", str(run),
            "--epochs", "1", "--batchsize", "16", *TINY, "--quiet", *more]  # fmt: skip


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("torch-vae: error: "), lines
    return lines[0]


# -- data loss --------------------------------------------------------------------------------


def test_a_second_run_into_a_folder_in_use_is_refused_and_touches_nothing(
    mnist_dir, tmp_path, capsys
):
    from torch_vae.training.rundir import RunLock

    run = tmp_path / "run"
    run.mkdir()
    holder = RunLock(run)  # another process's run, its folder still empty
    try:
        assert main(_train_args(run, mnist_dir)) == 1
        assert "being written by another torch-vae process" in _error(capsys)
        (run / ".config.json.abcd1234.tmp").write_bytes(b"being written")  # its config.json
        assert main(_train_args(run, mnist_dir)) == 1
        assert "already exists and is not empty" in _error(capsys)
        assert sorted(p.name for p in run.iterdir()) == [".config.json.abcd1234.tmp"]
    finally:
        holder.release()
    (run / ".config.json.abcd1234.tmp").unlink()
    assert main(_train_args(run, mnist_dir)) == 0  # once it is free


def test_a_resume_of_a_run_in_use_is_refused(trained, mnist_dir, capsys):
    from torch_vae.training.rundir import RunLock

    metrics = (trained / "metrics.jsonl").read_text()
    holder = RunLock(trained)
    try:
        args = ["train", "--resume", str(trained), "--epochs", "3", "--data_dir", str(mnist_dir)]
        assert main([*args, "--quiet"]) == 1
        assert "being written by another torch-vae process" in _error(capsys)
    finally:
        holder.release()
    assert (trained / "metrics.jsonl").read_text() == metrics


def test_a_folder_left_by_a_run_killed_before_saving_is_started_anew_unless_in_use(
    mnist_dir, tmp_path, capsys, caplog
):
    from torch_vae.training import TrainConfig
    from torch_vae.training.rundir import RunLock, write_run_config

    run = tmp_path / "run"
    run.mkdir()
    write_run_config(run, ModelConfig(), TrainConfig())  # all a SIGKILLed first epoch leaves
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1").write_bytes(b"x")  # and its logger's file
    config = (run / "config.json").read_text()
    args = ["train", "--resume", str(run), "--data_dir", str(mnist_dir), "--quiet"]
    assert main(args) == 1  # nothing to resume: it says how to start anew there
    assert f"start it anew there: torch-vae train --run_dir {run}" in _error(capsys)
    holder = RunLock(run)  # while a run in its first epoch writes it: refused, kept
    try:
        assert main(_train_args(run, mnist_dir)) == 1
        assert "being written by another torch-vae process" in _error(capsys)
        assert main(args) == 1  # a resume is not told to choose another --run_dir
        error = _error(capsys)
        assert "wait until it ends (nothing was changed)" in error and "--run_dir" not in error
    finally:
        holder.release()
    assert (run / "config.json").read_text() == config
    with caplog.at_level("INFO", logger="torch_vae"):
        assert main(_train_args(run, mnist_dir)) == 0
    assert "held only the config.json of a run that saved nothing" in caplog.text
    assert (run / "ckpt.pt").is_file() and not (run / "tensorboard").exists()


def test_run_dir_that_is_a_file_or_a_folder_of_other_files_is_refused_untouched(
    mnist_dir, tmp_path, capsys
):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert main(_train_args(afile, mnist_dir)) == 1
    assert _error(capsys).endswith(f"--run_dir {afile} is a file; give a folder (nothing was "
                                   "changed)")  # fmt: skip
    assert main(_train_args(afile / "sub", mnist_dir)) == 1
    assert _error(capsys).endswith(
        f"--run_dir {afile / 'sub'} cannot be written: {afile} is a file, not a folder"
    )
    theirs = tmp_path / "project"
    theirs.mkdir()
    (theirs / "config.json").write_text('{"not": "a torch-vae run"}')
    assert main(_train_args(theirs, mnist_dir)) == 1
    assert "already exists and is not empty" in _error(capsys)
    assert (theirs / "config.json").read_text() == '{"not": "a torch-vae run"}'
    assert afile.read_text() == "mine"


def _torch_vae_process(args, **kw):
    import subprocess
    import sys

    import torch_vae

    src = str(Path(torch_vae.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "torch_vae", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)  # fmt: skip


@pytest.mark.slow  # a real training process runs while two others try its folder: 10-30 s
def test_a_run_folder_in_use_by_another_process_is_refused_and_the_run_goes_on(data, tmp_path):
    """The lock on a run folder holds across processes: while one ``train --run_dir X`` runs,
    a second ``train --run_dir X`` and a ``train --resume X`` each fail with one line, and the
    first keeps its files and ends well."""
    import time

    from runs import train_args
    from torch_vae.training.rundir import read_metrics

    run, epochs = tmp_path / "run", 300  # long enough to outlast the two others
    resume = ["train", "--resume", str(run), "--data_dir", str(data), "--threads", "1",
              "--cpu", "--quiet"]  # fmt: skip
    procs = [_torch_vae_process(train_args(run, data, epochs))]
    first = procs[0]
    try:
        end = time.monotonic() + 120
        while not (run / "ckpt.pt").exists():  # its first epoch saved: a resume would start
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < end, "the first run wrote no training state in time"
            time.sleep(0.01)
        config = (run / "config.json").read_bytes()
        for args, match in (
            (train_args(run, data, epochs), "already exists and is not empty"),
            (resume, "being written by another torch-vae process"),
        ):
            procs.append(_torch_vae_process(args))
            _, err = procs[-1].communicate(timeout=120)
            assert first.poll() is None, "the first run ended before the second was refused"
            lines = err.strip().splitlines()
            assert procs[-1].returncode == 1 and len(lines) == 1, err
            assert lines[0].startswith("torch-vae: error: ") and match in lines[0], err
            assert (run / "config.json").read_bytes() == config
        _, err = first.communicate(timeout=300)
    finally:
        for proc in procs:  # whatever failed: no process of the test outlives it
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert first.returncode == 0, err
    assert (run / "config.json").read_bytes() == config
    assert [r["epoch"] for r in read_metrics(run)] == list(range(1, epochs + 1))
    assert (run / "model.safetensors").is_file() and not list(run.rglob(".*.tmp"))


def test_signals_while_the_state_is_saved_wait_for_the_save(
    mnist_dir, tmp_path, monkeypatch, capsys
):
    """A second and third Ctrl-C just after the first: the state is still saved, and a forced
    stop waits for the files being written."""
    from torch_vae.training import loop as train_mod

    real = train_mod.save_train_state

    def save(*a, **k):  # the user presses Ctrl-C twice more while the state is written
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        real(*a, **k)

    monkeypatch.setattr(train_mod, "save_train_state", save)
    monkeypatch.setattr(train_mod.StopOnSignal, "REPEAT_SECONDS", 0.0)  # presses, not a burst
    calls = []
    real_objective = VAE.objective

    def objective(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:  # the first Ctrl-C, during the second step
            os.kill(os.getpid(), signal.SIGINT)
        return real_objective(self, *a, **k)

    monkeypatch.setattr(VAE, "objective", objective)
    run = tmp_path / "run"
    assert main(_train_args(run, mnist_dir)) == 130
    assert "signal again to stop at once" in capsys.readouterr().err
    assert (run / "ckpt.pt").is_file() and (run / "config.json").is_file()
    # stopped in its first epoch: no weights yet, and a command that wants them says why
    assert not (run / "model.safetensors").exists()
    assert main(["generate", "--model", str(run), "--outdir", str(tmp_path / "g")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"its run stopped before the end of its first epoch; continue it with "
                        f"torch-vae train --resume {run}") and "\n" not in err  # fmt: skip
    # still in its first epoch (no training state yet either): the same command says so
    (run / "ckpt.pt").unlink()
    assert main(["generate", "--model", str(run), "--outdir", str(tmp_path / "g")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("its run is in its first epoch (or was killed in it); the weights are "
                        "written when the epoch ends") and "\n" not in err  # fmt: skip


def test_a_run_stopped_at_once_in_its_first_epoch_says_its_folder_is_removed(
    mnist_dir, tmp_path, monkeypatch, caplog
):
    from torch_vae.training import loop as train_mod

    monkeypatch.setattr(train_mod.StopOnSignal, "REPEAT_SECONDS", 0.0)  # presses, not a burst
    real = VAE.objective

    def objective(self, *a, **k):  # three Ctrl-Cs in the first step: nothing saved yet
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, *a, **k)

    monkeypatch.setattr(VAE, "objective", objective)
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="torch_vae"):
        assert main(_train_args(run, mnist_dir)) == 130
    assert not run.exists()
    assert (f"stopped at once before anything of the run was saved: {run}, which held nothing "
            "yet, is removed") in caplog.text  # fmt: skip


def test_the_progress_bars_count_to_the_step_max_steps_ends_at(mnist_dir, tmp_path, capsys):
    args = _train_args(tmp_path / "run", mnist_dir, "--batchsize", "4", "--epochs", "5")
    args.remove("--quiet")
    assert main([*args, "--max_steps", "12", "--val_images", "4"]) == 0
    bars = capsys.readouterr().err.replace("\r", "\n")
    per_epoch = 36 // 4  # 40 training images, 4 held out
    assert "epoch 1/2: 100%|" in bars and f"{per_epoch}/{per_epoch} [" in bars, bars
    assert "epoch 2/2: 100%|" in bars and f"{12 - per_epoch}/{12 - per_epoch} [" in bars, bars
    assert "/5:" not in bars and "epoch 3" not in bars


def test_output_flags_never_write_over_a_run_s_files(trained, mnist_dir, capsys):
    before = {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()}
    data = ["--data_dir", str(mnist_dir), "--quiet"]
    for args in (
        ["evaluate", "--model", str(trained), "--report", str(trained / "model.safetensors")],
        ["evaluate", "--model", str(trained), "--report", str(trained / "images/epoch_001.png")],
        ["sample-quality", "--model", str(trained), "--features", "encoder", "--nsamples", "8",
         "--report", str(trained / "config.json")],
        ["plot", str(trained), "--out", str(trained / "ckpt.pt")],
        ["plot", str(trained), "--out", str(trained / "images" / "epoch_002.png")],
    ):  # fmt: skip
        assert main([*args, *data] if args[0] != "plot" else [*args, "--quiet"]) == 1, args
        err = _error(capsys)
        assert "will not write over" in err or "ending in .png" in err, err
    assert {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()} == before


def test_train_classifier_refuses_a_model_folder_before_training(trained, labelled, capsys):
    before = (trained / "config.json").read_bytes()
    args = ["train-classifier", "--dataset", "mnist", "--out", str(trained), "--epochs", "1"]
    assert main([*args, "--data_dir", str(labelled), "--quiet"]) == 1
    assert "--out" in _error(capsys)
    assert (trained / "config.json").read_bytes() == before


def test_train_classifier_refuses_an_existing_file_as_out_before_training(
    labelled, tmp_path, monkeypatch, capsys
):
    import time

    from torch_vae.cli import train_classifier

    def never(*a, **k):
        raise AssertionError("the classifier was trained for a file --out")

    monkeypatch.setattr(train_classifier, "train_classifier", never)
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    args = ["train-classifier", "--dataset", "mnist", "--out", str(out), "--epochs", "1"]
    start = time.monotonic()
    assert main([*args, "--data_dir", str(labelled), "--quiet"]) == 1
    assert time.monotonic() - start < 1
    assert f"--out {out} is a file; give a folder" in _error(capsys)
    assert out.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        "data", "notes.txt"
    ]  # fmt: skip


def test_commands_on_a_shipped_model_write_nothing_into_its_folder(tmp_path, monkeypatch, capsys):
    from torch_vae.cli import common

    shipped = tmp_path / "models"
    model = shipped / "fashion-mnist" / "tiny"
    VAE(ModelConfig(image_size=16, max_filters=8, depth=2)).save_pretrained(model, "mnist")
    monkeypatch.setattr(common, "shipped_models", lambda: shipped)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in model.iterdir())
    assert main(["fit-sampler", "--model", str(model), "--quiet"]) == 1
    assert "shipped model" in _error(capsys)
    assert common.default_report(model, "eval-mnist-test") == (
        tmp_path / "reports" / "tiny" / "eval-mnist-test.json"
    ).relative_to(tmp_path)
    assert sorted(p.name for p in model.iterdir()) == before


def test_generate_into_a_used_folder_leaves_only_its_own_samples(trained, tmp_path):
    out = tmp_path / "samples"
    assert main(["generate", "--model", str(trained), "--nsamples", "9", "--outdir", str(out),
                 "--quiet"]) == 0  # fmt: skip
    (out / "notes.txt").write_text("mine")
    assert main(["generate", "--model", str(trained), "--nsamples", "4", "--outdir", str(out),
                 "--quiet"]) == 0  # fmt: skip
    names = sorted(p.name for p in out.iterdir())
    assert names == ["all.png", "notes.txt"] + [f"sample_{i:05d}.png" for i in range(4)]


def test_reconstruct_into_a_used_folder_leaves_only_its_own_reconstructions(mnist_dir, tmp_path):
    model = VAE(ModelConfig(image_size=16, max_filters=8, depth=2)).save_pretrained(
        tmp_path / "model", "mnist"
    )  # untrained: its reconstructions are pictures all the same
    out = tmp_path / "rec"
    args = ["reconstruct", "--model", str(model), "--rec_testdata", "--data_dir",
            str(mnist_dir), "--outdir", str(out), "--quiet", "--nimages"]  # fmt: skip
    assert main([*args, "9"]) == 0
    assert len(list(out.glob("rec_*.png"))) == 9
    (out / "notes.txt").write_text("mine")
    (out / "sample_00000.png").write_bytes((out / "rec_00000.png").read_bytes())  # generate's
    assert main([*args, "4"]) == 0
    names = sorted(p.name for p in out.iterdir())
    kept = ["all.png", "notes.txt", "sample_00000.png"]
    assert names == kept[:2] + [f"rec_{i:05d}.png" for i in range(4)] + kept[2:]


# -- a stranger's program ---------------------------------------------------------------------


def _eps_named_png(path):
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")


def test_files_in_formats_no_dataset_holds_are_refused_by_content(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    from torch_vae.cli.common import read_image
    from torch_vae.data.datasets import folder_dataset

    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(1))
    _eps_named_png(tmp_path / "x.png")
    with pytest.raises(TorchVaeError, match="not an image in a format"):
        read_image(tmp_path / "x.png", 1, 16)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(11):
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(folder / f"{i}.png")
    _eps_named_png(folder / "z.png")
    with pytest.raises(TorchVaeError, match="z.png"):
        folder_dataset(folder)
    assert not opened  # PostScript was never handed to its plug-in (Ghostscript)


# -- silent wrong results ---------------------------------------------------------------------


def test_archives_of_any_size_are_checked_against_their_md5(tmp_path, monkeypatch):
    from torch_vae.data import datasets

    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {})
    folder = tmp_path / "data" / "cifar-10"
    folder.mkdir(parents=True)
    with open(folder / "cifar-10-python.tar.gz", "wb") as f:  # sparse: 2 GiB of nothing
        f.truncate(2**31 + 10)
    hashed = []
    monkeypatch.setattr(datasets, "md5sum", lambda p: hashed.append(p) or "0" * 32)
    with pytest.raises(TorchVaeError, match="does not match the official checksum"):
        datasets.DATASETS["cifar-10"].fetch(tmp_path / "data", progress=False)
    assert hashed


def test_a_verified_archive_is_not_hashed_again_until_it_changes(tmp_path, monkeypatch):
    from torch_vae.data import datasets

    path = tmp_path / "a.tar.gz"
    path.write_bytes(b"archive")
    hashed = []
    monkeypatch.setattr(datasets, "md5sum", lambda p: hashed.append(p) or "m" * 32)
    datasets._verify(path, "m" * 32)
    datasets._verify(path, "m" * 32)
    assert len(hashed) == 1
    path.write_bytes(b"another archive")
    with pytest.raises(TorchVaeError):
        datasets._verify(path, "x" * 32)


def test_evaluate_does_not_depend_on_batch_size_threads_or_importance_samples(
    trained, mnist_dir, tmp_path
):
    reports = []
    for i, flags in enumerate(
        [
            ["--batchsize", "100", "--iw_samples", "0"],
            ["--batchsize", "3", "--iw_samples", "0"],
            ["--batchsize", "7", "--iw_samples", "2", "--threads", "1"],
        ]
    ):
        report = tmp_path / f"r{i}.json"
        args = ["evaluate", "--model", str(trained), "--data_dir", str(mnist_dir), "--quiet",
                "--report", str(report), *flags]  # fmt: skip
        assert main(args) == 0
        reports.append(json.loads(report.read_text()))
    for key in ("objective", "sse", "kl", "mse", "psnr", "decoder_sigma"):
        values = [round(r[key], 4) for r in reports]
        assert len(set(values)) == 1, (key, values)


def test_per_epoch_metrics_do_not_depend_on_the_batch_size(trained):
    from torch_vae import load_model
    from torch_vae.evaluation.likelihood import test_metrics

    model = load_model(trained)
    images = torch.randint(0, 256, (20, 32, 32, 1), dtype=torch.uint8)
    a, b = (test_metrics(model, images, torch.device("cpu"), n) for n in (20, 3))
    assert all(abs(a[k] - b[k]) < 1e-4 * max(1.0, abs(a[k])) for k in a)


def test_a_diverged_refinement_is_an_error_not_a_report(trained, mnist_dir, tmp_path, capsys):
    report = tmp_path / "r.json"
    args = ["evaluate", "--model", str(trained), "--data_dir", str(mnist_dir), "--iw_samples",
            "0", "--refine_steps", "10", "--refine_lr", "1e8", "--report", str(report)]  # fmt: skip
    assert main([*args, "--quiet"]) == 1
    assert "refinement diverged" in _error(capsys) and not report.exists()


def test_reports_hold_strict_json_only(tmp_path):
    from torch_vae.evaluation.reports import write_report

    with pytest.raises(TorchVaeError, match="samples.fd is not a finite number"):
        write_report(tmp_path / "r.json", {"samples": {"fd": float("nan")}})
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_weights_stored_as_integers_or_booleans_are_refused(tmp_path, dtype):
    from safetensors.torch import load_file, save_file

    from torch_vae import load_model

    path = tmp_path / "m.safetensors"
    VAE(ModelConfig(image_size=16, max_filters=8, depth=2)).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(str(weights))
    meta = json.loads(json.dumps(__import__("safetensors").safe_open(
        str(weights), "pt").metadata()))  # fmt: skip
    state["decoder.lin.weight"] = state["decoder.lin.weight"].to(dtype)
    save_file(state, str(path), metadata=meta)
    with pytest.raises(TorchVaeError, match="decoder.lin.weight is stored as"):
        load_model(path)


# -- the explorer -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    import warnings

    from webtools import tiny_explorer

    from torch_vae.explorer.app import allowed_hosts, create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    app = create_app(tiny_explorer(latent_dims=3), hosts=allowed_hosts("127.0.0.1"))
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        yield c


def test_the_explorer_refuses_other_sites_and_other_host_names(client):
    z = {"z": [0.0, 0.0, 0.0]}
    assert client.post("/api/decode", json=z).status_code == 200
    own = {"Origin": "http://127.0.0.1:8000"}
    assert client.post("/api/decode", json=z, headers=own).status_code == 200
    evil = client.post("/api/decode", json=z, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403 and "other sites" in evil.json()["detail"]
    framed = client.post("/api/decode", json=z, headers={"Origin": "null"})  # a sandboxed page
    assert framed.status_code == 403 and "other sites (null)" in framed.json()["detail"]
    rebound = client.get("/api/info", headers={"Host": "evil.example:8000"})
    assert rebound.status_code == 403 and "host" in rebound.json()["detail"]
    assert client.get("/api/info", headers={"Host": "localhost:8000"}).status_code == 200


def test_the_explorer_s_samples_never_fail_on_a_sampler_file_of_another_latent_size(
    mnist_dir, tmp_path, caplog
):
    """A sampler file fitted to the model's own weights but drawing 5-d codes for a latent-3
    model: /api/sample answers (from the prior, with a warning), never a 500."""
    import warnings

    from webtools import tiny_model

    from torch_vae import load_model
    from torch_vae.explorer.app import create_app
    from torch_vae.explorer.state import load_explorer
    from torch_vae.io.files import file_sha256
    from torch_vae.priors import fit_gaussian, sampler_path, save_sampler

    folder = tiny_model(latent_dims=3).save_pretrained(tmp_path / "model", "mnist")
    digest = file_sha256(folder / "model.safetensors")
    sampler = fit_gaussian(np.random.default_rng(0).normal(size=(50, 5)), {"model_sha256": digest})
    save_sampler(sampler, sampler_path(folder, "gaussian"))
    ex = load_explorer(load_model(folder), folder, "mnist", mnist_dir, 8, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    with TestClient(create_app(ex), raise_server_exceptions=False) as c:
        for body in ({"seed": 1}, {}):
            got = c.post("/api/sample", json=body)
            assert got.status_code == 200, got.text
            assert len(got.json()["z"]) == 3
        assert c.get("/api/info").json()["sampler"] == "the prior N(0, I)"
    assert "draws 5-d codes, the model has 3" in caplog.text


def test_uploads_whose_pixels_take_too_much_memory_are_refused_before_decoding():
    import io

    from torch_vae.explorer.state import UploadError, read_upload

    buf = io.BytesIO()
    Image.new("F", (5000, 4000)).save(buf, format="TIFF", compression="tiff_deflate")
    with pytest.raises(UploadError) as info:
        read_upload(buf.getvalue(), 1, 16)
    assert info.value.status == 413 and "MiB" in str(info.value)


def test_at_most_two_uploads_are_decoded_at_once(monkeypatch):
    import time

    from torch_vae.explorer import state

    running, peak, lock = [0], [0], threading.Lock()

    def slow(img, channels, size, crop):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return np.zeros((size, size, channels), np.uint8)

    monkeypatch.setattr(state, "to_array", slow)
    import io

    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    threads = [threading.Thread(target=state.read_upload, args=(buf.getvalue(), 1, 8))
               for _ in range(6)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 2


def test_a_native_projection_is_built_when_first_used_and_bounded():
    with pytest.raises(TorchVaeError, match="works up to --image_size 1024"):
        ModelConfig(image_size=2048, native_size=2047, depth=3, max_filters=8)
    model = VAE(ModelConfig(image_size=32, native_size=28, max_filters=8, depth=2))
    assert model._projector is None  # loading a model never waits for it
    model.decode(torch.zeros(1, 8))
    assert model._projector is not None


def test_a_model_file_with_native_size_one_below_its_image_size_never_stalls_a_loader(tmp_path):
    """native_size = image_size - 1, whose projection once took 23 s to build as the file was
    loaded: at the largest image size allowed, the file loads at once (the projection waits for
    the first decode, and builds in a fraction of a second), a smaller one decodes its first
    image at once, and a file that asks for a larger one is refused at once."""
    import time

    from torch_vae import load_model
    from torch_vae.io.weights import write_weights
    from torch_vae.models import save_model
    from torch_vae.models.upsampling import upsampling_projector

    shape = {"max_filters": 8, "depth": 3, "latent_dims": 2}
    for size in (1024, 512):
        config = ModelConfig(image_size=size, native_size=size - 1, **shape)
        path = save_model(VAE(config), tmp_path / f"{size}.safetensors")
        start = time.monotonic()
        model = load_model(path).eval()
        assert model._projector is None and time.monotonic() - start < 2
    start = time.monotonic()
    with torch.inference_mode():
        assert model.decode(torch.zeros(1, 2)).shape == (1, 1, 512, 512)
    assert model._projector is not None and time.monotonic() - start < 2
    start = time.monotonic()
    upsampling_projector(1023, 1024)  # what the first decode at 1024 builds
    assert time.monotonic() - start < 2
    big = VAE(ModelConfig(image_size=2048, **shape))
    config = {**big.config.to_dict(), "native_size": 2047}
    path = write_weights(big.state_dict(), config, tmp_path / "b.safetensors")
    start = time.monotonic()
    with pytest.raises(TorchVaeError, match="works up to --image_size 1024"):
        load_model(path)
    assert time.monotonic() - start < 2


@pytest.mark.parametrize(
    "args,match",
    [
        (["interpolate", "--random", "--steps", "100000000"], "--steps must be an integer"),
        (["traverse", "--steps", "1000000"], "--steps must be an integer from 2 to 256"),
        (["traverse", "--span", "1e308"], "--span must be a number > 0 and at most 1000"),
    ],
)
def test_pictures_are_bounded(args, match, trained, capsys):
    assert main([*args, "--model", str(trained)]) == 1
    assert match in _error(capsys)


# -- tracebacks where a line is owed ----------------------------------------------------------


def test_a_writer_s_own_error_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    import shutil

    from torch_vae.io import files

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(OSError) as info, files.atomic_path(tmp_path / "ckpt.pt") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter "
                           "failed writing file data/0: file write failed")  # fmt: skip
    assert info.value.errno == 28 and str(tmp_path / "ckpt.pt") in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("raised", ["SafetensorError", "OSError"])
def test_a_full_disk_while_safetensors_writes_is_one_line_and_leaves_no_weights(
    raised, mnist_dir, tmp_path, monkeypatch, capsys
):
    import errno

    from safetensors import SafetensorError

    from torch_vae.io import weights
    from torch_vae.models import save_model

    def full_disk(tensors, filename, metadata=None):  # the disk fills halfway through the file
        with open(filename, "wb") as f:
            f.write(b"\x08\x00\x00\x00\x00\x00\x00\x00{")
        if raised == "OSError":
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        raise SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(weights, "save_file", full_disk)
    run = tmp_path / "run"
    assert main(_train_args(run, mnist_dir)) == 1
    err = _error(capsys)
    assert "No space left on device" in err and "free some space" in err, err
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "data" not in p.parts]
    assert not [p for p in written if "safetensors" in p.name or p.name.endswith(".tmp")]
    weights_file = tmp_path / "w.safetensors"
    with pytest.raises(OSError) as info:
        save_model(VAE(ModelConfig(image_size=16, max_filters=8, depth=2)), weights_file)
    assert info.value.errno == errno.ENOSPC and weights_file.name in str(info.value)
    assert not weights_file.exists()


@pytest.mark.parametrize(
    "config,match",
    [
        ({"dataset": 3}, "dataset must be a string, got 3"),
        ({"data_dir": 7}, "data_dir must be a path"),
        ({"run_dir": ""}, "run_dir must be a path"),
        ({"device": None}, "device must be a string"),
        ({"init_from": 5}, "init_from must be a path"),
        ({"epochs": 1e400}, "epochs must be an integer, got Infinity"),
        ({"quiet": "no"}, "quiet must be true or false"),
        ({"blocks": 2}, "--blocks is an option of --arch resnet, vqvae, not of --arch original"),
    ],
)
def test_config_files_of_the_wrong_types_are_one_line(config, match, tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    assert main(["train", "--config", str(path), "--dry_run"]) == 1
    assert match in _error(capsys)


@pytest.mark.parametrize(
    "args,match",
    [
        (["generate", "--outdir", "o", "--seed", str(2**64)], "--seed must be an integer from"),
        (["evaluate", "--seed", str(2**64)], "--seed must be an integer from"),
        (["sample-quality", "--seed", str(-(2**63) - 1)], "--seed must be an integer from"),
        (["interpolate", "--random", "--seed", str(2**64)], "--seed must be an integer from"),
        (["fit-sampler", "--seed", "-1"], "--seed must be an integer >= 0"),
        (["generate", "--outdir", "o", "--device", "meta"], "not one torch-vae runs on"),
        (["generate", "--outdir", "o", "--device", "xla"], "not one torch-vae runs on"),
    ],
)
def test_out_of_range_seeds_and_devices_are_one_line(args, match, trained, capsys, tmp_path,
                                                     monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert main([args[0], "--model", str(trained), *args[1:]]) == 1
    assert match in _error(capsys)


@pytest.mark.parametrize("seed", [str(2**64), str(10**30), str(-(2**63) - 1)])
@pytest.mark.parametrize("command", ["average", "train-classifier"])
def test_out_of_range_seeds_of_average_and_train_classifier_are_one_line(
    command, seed, tmp_path, monkeypatch, capsys
):
    from torch_vae.cli import average, train_classifier

    def never(*a, **k):
        raise AssertionError("the command ran with an out-of-range seed")

    monkeypatch.setattr(average, "average_runs", never)
    monkeypatch.setattr(train_classifier, "train_classifier", never)
    args = {
        "average": ["average", str(tmp_path / "run"), "--last", "1"],
        "train-classifier": ["train-classifier", "--dataset", "mnist"],
    }[command]
    out = ["--out", str(tmp_path / "out"), "--data_dir", str(tmp_path / "data")]
    assert main([*args, *out, "--seed", seed, "--quiet"]) == 1
    assert "--seed must be an integer from -2**63 to 2**64 - 1" in _error(capsys)
    assert not (tmp_path / "out").exists()


def test_negative_seeds_of_average_and_train_classifier_are_taken():
    from torch_vae.cli.options import AverageOptions
    from torch_vae.evaluation.classifier import ClassifierTraining

    for seed in (-1, -(2**63), 2**64 - 1):  # as torch.Generator().manual_seed takes them
        AverageOptions(runs=(Path("r"),), last=1, out=Path("o"), seed=seed)
        ClassifierTraining(out=Path("o"), seed=seed)
        torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("version", ["9" * 5000, "1" * 5000], ids=["9x5000", "1x5000"])
def test_a_weights_file_with_a_format_version_of_thousands_of_digits_is_one_line(
    version, tmp_path, capsys
):
    from safetensors import safe_open
    from safetensors.torch import save_file

    folder = VAE(ModelConfig(image_size=16, max_filters=8, depth=2)).save_pretrained(
        tmp_path / "model", "mnist"
    )
    path = folder / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = {**f.metadata(), "format_version": version}
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    save_file(state, str(path), metadata=meta)
    for model in (folder, path):
        args = ["generate", "--model", str(model), "--outdir", str(tmp_path / "o"), "--quiet"]
        assert main(args) == 1
        assert f"{path} has a corrupt format version '{version[:20]}'" in _error(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("size", ["3", "100000"])
def test_classifier_sizes_out_of_range_are_one_line(size, capsys, tmp_path):
    args = ["train-classifier", "--out", str(tmp_path / "c"), "--image_size", size]
    assert main(args) == 1
    assert "--image_size must be an integer from 8 to 1024" in _error(capsys)


def test_a_sampler_of_another_latent_size_is_one_line(trained, tmp_path, capsys):
    from torch_vae.io.files import file_sha256
    from torch_vae.priors import fit_gaussian, sampler_path, save_sampler

    digest = file_sha256(trained / "model.safetensors")
    sampler = fit_gaussian(np.random.default_rng(0).normal(size=(50, 5)), {"model_sha256": digest})
    save_sampler(sampler, sampler_path(trained, "gaussian"))
    args = ["generate", "--model", str(trained), "--outdir", str(tmp_path / "o")]
    assert main([*args, "--sampler", "gaussian"]) == 1
    assert "draws 5-d codes, but the model has 3 latent dimensions" in _error(capsys)


def test_original_checkpoints_with_odd_keys_or_shapes_are_one_line(tmp_path, capsys):
    torch.save({1: torch.zeros(2)}, tmp_path / "keys.pth")
    torch.save({"encoder.conv1.weight": torch.zeros(3), "encoder.proj_mu.weight":
                torch.zeros(8, 10)}, tmp_path / "shapes.pth")  # fmt: skip
    for name, match in (("keys.pth", "state_dict of named tensors"),
                        ("shapes.pth", "wrong number of dims")):  # fmt: skip
        assert main(["import-torch-vae", str(tmp_path / name), "--dataset", "mnist"]) == 1
        assert match in _error(capsys)
    assert main(["import-torch-vae", str(tmp_path), "--dataset", "mnist"]) == 1
    assert "is a folder" in _error(capsys)


def test_a_model_too_large_for_memory_is_refused_before_the_data(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(folder / f"{i}.png")
    data = tmp_path / "data"
    args = ["train", "--dataset", f"folder:{folder}", "--image_size", "65536", "--depth", "3",
            "--data_dir", str(data), "--run_dir", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 1
    assert "GiB of memory" in _error(capsys)
    assert not (tmp_path / "run").exists() and not (data / "cache").exists()


# -- smaller ----------------------------------------------------------------------------------


def test_fifos_missing_files_and_empty_paths_are_refused_saying_which(tmp_path, capsys, trained):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert main(["train", "--config", str(fifo)]) == 1
    assert "not a regular file" in _error(capsys)
    args = ["interpolate", "--model", str(trained), "--images", str(fifo), str(fifo)]
    assert main([*args, "--outdir", str(tmp_path / "o")]) == 1
    assert "not a regular file" in _error(capsys)
    missing = tmp_path / "missing.json"  # nothing there: said so, not "not a regular file"
    assert main(["train", "--config", str(missing)]) == 1
    assert f"cannot read --config {missing}: no such file" in _error(capsys)
    args = ["interpolate", "--model", str(trained), "--images", str(missing), str(missing)]
    assert main([*args, "--outdir", str(tmp_path / "o")]) == 1
    assert f"cannot read image {missing}: no such file" in _error(capsys)
    odd = tmp_path / "odd.json"
    odd.write_text('{"epochs": 1, "nosuch": 2}')
    assert main(["train", "--config", str(odd)]) == 1
    assert f"--config {odd}: nosuch is not a flag of this command" in _error(capsys)
    odd.write_text('{"epochs": 1, "resume": "runs/x"}')  # a flag, but not one for a file
    assert main(["train", "--config", str(odd)]) == 1
    assert _error(capsys).endswith(f"--config {odd}: resume cannot be given in a config file; "
                                   "pass --resume on the command line")  # fmt: skip
    assert main(["train", "--dataset", "folder:"]) == 1
    assert "needs the folder's path" in _error(capsys)
    # a trained model's commands too (they made it the working folder, and read every image)
    rec = ["reconstruct", "--model", str(trained), "--dataset", "folder:", "--outdir"]
    assert main([*rec, str(tmp_path / "rec")]) == 1
    assert "'folder:' needs the folder's path" in _error(capsys)
    with pytest.raises(SystemExit):  # argparse: its usage and error line, exit status 2
        main(["train", "--data_dir", ""])
    assert "an empty path" in capsys.readouterr().err


def test_a_dry_run_leaves_no_folder_and_says_what_it_did(mnist_dir, tmp_path, monkeypatch,
                                                         caplog):  # fmt: skip
    import logging

    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="torch_vae"):
        args = ["train", "--dataset", "mnist", "--data_dir", str(mnist_dir), "--dry_run", *TINY]
        assert main(args) == 0
    assert not (tmp_path / "runs").exists()
    assert "2 in all" in caplog.text and "dry run done" in caplog.text
    assert "--precision auto: " in caplog.text  # which precision auto chose


def test_plot_writes_png_only_and_names_what_it_refuses(trained, tmp_path, capsys):
    assert main(["plot", str(trained), "--out", str(tmp_path / "x.jpg")]) == 1
    assert "ending in .png" in _error(capsys)


def test_output_flags_replace_torch_vaes_own_outputs_but_not_a_users_files(
    trained, mnist_dir, tmp_path, capsys
):
    from PIL import Image

    users = tmp_path / "users"
    users.mkdir()
    files = {"script.py": b"print(1)\n", "data.json": b'{"rows": [1, 2]}\n',
             "notes.csv": b"name,value\na,1\n"}  # fmt: skip
    for name, content in files.items():
        (users / name).write_bytes(content)
    Image.new("L", (4, 4)).save(users / "photo.png")
    photo = (users / "photo.png").read_bytes()
    curves = tmp_path / "curves.png"
    assert main(["plot", str(trained), "--out", str(curves)]) == 0
    assert main(["plot", str(trained), "--out", str(curves)]) == 0  # its own figure: replaced
    assert main(["plot", str(trained), "--out", str(users / "photo.png")]) == 1
    assert "photo.png exists and is not one of torch-vae's" in _error(capsys)
    data = ["--data_dir", str(mnist_dir), "--nimages", "4", "--quiet"]
    flags = ["evaluate", "--model", str(trained), "--iw_samples", "0", *data]
    for name in ("script.py", "data.json"):
        assert main([*flags, "--report", str(users / name)]) == 1
        assert f"--report {users / name} exists and is not one of" in _error(capsys)
    report = tmp_path / "mine.json"
    assert main([*flags, "--report", str(report)]) == 0
    assert main([*flags, "--report", str(report)]) == 0  # its own report: replaced
    capsys.readouterr()
    assert main(["score", "--model", str(trained), *data, "--out", str(users / "notes.csv")]) == 1
    assert "notes.csv exists and is not one of" in _error(capsys)
    for name, content in files.items():
        assert (users / name).read_bytes() == content
    assert (users / "photo.png").read_bytes() == photo
    assert sorted(p.name for p in users.iterdir()) == sorted([*files, "photo.png"])


def test_a_failed_download_leaves_no_empty_folders(tmp_path, monkeypatch):
    from torch_vae.data import datasets
    from torch_vae.data.download import DownloadError

    def offline(url, md5, dest, progress=True):
        raise DownloadError("offline", url, "ConnectionError")

    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {})
    monkeypatch.setattr(datasets, "download", offline)
    with pytest.raises(TorchVaeError, match="could not download"):
        datasets.DATASETS["mnist"].fetch(tmp_path / "data", progress=False)
    assert not (tmp_path / "data").exists()


def test_the_resume_hint_names_the_threads(mnist_dir, tmp_path, monkeypatch, capsys):
    real = VAE.objective

    def objective(self, *a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        return real(self, *a, **k)

    monkeypatch.setattr(VAE, "objective", objective)
    assert main(_train_args(tmp_path / "run", mnist_dir)) == 130
    assert f"--threads {torch.get_num_threads()} " in capsys.readouterr().err


def test_explore_help_says_how_many_threads_it_serves_with(capsys):
    with pytest.raises(SystemExit):
        main(["explore", "--help"])
    assert "then 1 while serving" in " ".join(capsys.readouterr().out.split())


# -- the validation split ---------------------------------------------------------------------


def test_runs_hold_out_a_validation_split_fixed_by_seed_and_measure_on_it(trained):
    from torch_vae.data.splits import rows_digest, validation_rows

    config = json.loads((trained / "config.json").read_text())
    assert config["train"]["val_images"] == 5000
    split = config["split"]
    digest = rows_digest(validation_rows(40, 5000, 0)[1])
    assert split == {
        "validation_images": 4,
        "training_images": 36,
        "validation_rows_sha256": digest,
    }
    record = json.loads((trained / "metrics.jsonl").read_text().splitlines()[0])
    assert "val_loss" in record and "test_loss" not in record
    train, val = validation_rows(40, 5000, 0)
    assert not set(train.tolist()) & set(val.tolist()) and len(train) + len(val) == 40
    assert not torch.equal(validation_rows(40, 5000, 1)[1], val)  # another seed, another split


def test_a_run_begun_before_validation_splits_resumes_without_one():
    from torch_vae.training.config import TrainConfig

    old = {"dataset": "mnist", "epochs": 2}
    assert TrainConfig.from_dict(old).val_images == 0
    assert TrainConfig().val_images == 5000


def test_a_model_in_another_checkout_of_torch_vae_counts_as_shipped(tmp_path, monkeypatch):
    from torch_vae.cli import common

    clone = tmp_path / "clone"
    (clone / "src" / "torch_vae").mkdir(parents=True)
    model = clone / "models" / "fashion-mnist" / "tiny"
    VAE(ModelConfig(image_size=16, max_filters=8, depth=2)).save_pretrained(model, "mnist")
    (model / "eval-mnist-test.json").write_text("{}")
    monkeypatch.setattr(common, "shipped_models", lambda: None)  # as from an installed wheel
    monkeypatch.chdir(tmp_path)
    assert common.default_report(model, "score-mnist-test") == Path(
        "reports/tiny/score-mnist-test.json"
    )
    with pytest.raises(TorchVaeError, match="a file of a shipped model"):
        common.check_output_file(model / "eval-mnist-test.json", "--out", report=True)
    assert (model / "eval-mnist-test.json").read_text() == "{}"
    elsewhere = tmp_path / "copy"  # a copy outside a checkout is the user's own
    VAE(ModelConfig(image_size=16, max_filters=8, depth=2)).save_pretrained(elsewhere, "mnist")
    assert (
        common.default_report(elsewhere, "score-mnist-test") == elsewhere / "score-mnist-test.json"
    )


def test_a_model_whose_image_folder_moved_says_to_pass_the_new_path(tmp_path, capsys):
    from fakedata import write_folder

    folder = write_folder(tmp_path / "pics", n=20, gray=True)
    run = tmp_path / "run"
    args = ["train", "--dataset", f"folder:{folder}", "--run_dir", str(run), "--max_steps", "1",
            "--batchsize", "8", *TINY, "--quiet"]  # fmt: skip
    assert main(args) == 0
    moved = folder.rename(tmp_path / "moved")
    out = ["--outdir", str(tmp_path / "o"), "--nimages", "2", "--quiet"]
    assert main(["reconstruct", "--model", str(run), *out]) == 1
    assert _error(capsys).endswith(
        f"{run} was trained on the image folder {folder.resolve()}, which does not exist any "
        "more; if it moved, pass --dataset folder:NEWPATH"
    )
    assert main(["reconstruct", "--model", str(run), "--dataset", f"folder:{moved}", *out]) == 0


@pytest.mark.parametrize(
    "command", ["generate", "reconstruct", "interpolate", "traverse", "manifold", "embed"]
)
def test_an_outdir_that_cannot_be_written_is_refused_in_one_line_before_the_work(
    trained, tmp_path, capsys, monkeypatch, command
):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    args = [command, "--model", str(trained), "--quiet"]
    assert main([*args, "--outdir", str(blocker / "out")]) == 1
    assert _error(capsys).endswith(
        f"--outdir {blocker / 'out'} cannot be written: {blocker} is a file, not a folder"
    )
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr("os.access", lambda path, mode: Path(path) != locked)
    assert main([*args, "--outdir", str(locked)]) == 1
    assert _error(capsys).endswith(
        f"--outdir {locked} cannot be written: the folder {locked} is not writable"
    )
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize(
    "command,work",
    [("export", "export.load_model"), ("sharpen", "sharpen.model_and_dataset"),
     ("train-classifier", "train_classifier.train_classifier"),
     ("average", "average.average_runs"), ("import-torch-vae", "convert.import_original"),
     ("fit-sampler", "fit_sampler.split_images")],
)  # fmt: skip
def test_an_out_folder_that_cannot_be_written_is_refused_before_the_work(
    trained, tmp_path, capsys, monkeypatch, command, work
):
    import importlib

    def no_work(*a, **k):
        raise AssertionError("the work started")

    module, name = work.split(".")
    monkeypatch.setattr(importlib.import_module(f"torch_vae.cli.{module}"), name, no_work)
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr("os.access", lambda path, mode: Path(path) != locked)
    (tmp_path / "orig.pth").write_bytes(b"x")
    out = str(locked / "out")
    args = {
        "export": ["--model", str(trained), "--out", out],
        "sharpen": ["--model", str(trained), "--out", out],
        "train-classifier": ["--dataset", "mnist", "--out", out],
        "average": [str(trained), "--last", "1", "--out", out],
        "import-torch-vae": [str(tmp_path / "orig.pth"), "--dataset", "mnist", "--out",
                             f"{out}.safetensors"],
        "fit-sampler": ["--model", str(locked), "--sampler", "gaussian"],
    }[command]  # fmt: skip
    if command == "fit-sampler":  # the sampler goes beside the model: a model's locked folder
        shutil.copytree(trained, locked, dirs_exist_ok=True)
    before = sorted(p.name for p in locked.iterdir())
    assert main([command, *args, "--quiet"]) == 1
    error = _error(capsys)
    assert f"the folder {locked} is not writable" in error, error
    assert sorted(p.name for p in locked.iterdir()) == before


def test_a_run_folder_that_cannot_be_cleaned_up_does_not_hide_the_error_that_ended_the_run(
    tmp_path, monkeypatch, caplog
):
    """A run folder made unwritable in the first epoch: the error was the clean-up's
    ("cannot access RUN/config.json"), not the failed write that ended the run."""
    import errno

    from torch_vae.training import rundir

    def refused(run_dir):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(run_dir / "config.json"))

    monkeypatch.setattr(rundir, "remove_unused_run", refused)
    with pytest.raises(OSError, match="No space left") as ended:
        with rundir.removed_if_unused(tmp_path / "run", new=True):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "x"))
    assert ended.value.errno == errno.ENOSPC
    assert f"could not remove the unfinished run folder {tmp_path / 'run'}" in caplog.text

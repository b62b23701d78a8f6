"""Training survives crashes, kills and signals; nothing broken is ever saved or loaded."""

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import torch_vae
from runs import assert_same_run, resume, train_args, weights
from torch_vae import ModelConfig, TorchVaeError, load_model, save_model
from torch_vae.cli import main
from torch_vae.cli.main import parse
from torch_vae.cli.train import run as cmd_train
from torch_vae.data import load_split
from torch_vae.errors import TrainingInterrupted
from torch_vae.io.files import atomic_path
from torch_vae.models import VAE
from torch_vae.training import TrainConfig
from torch_vae.training import loop as train_mod
from torch_vae.training.plan import RunData, RunPlan, plan_resume
from torch_vae.training.rundir import read_metrics
from torch_vae.training.state import load_train_state, save_train_state

MODEL = ModelConfig(in_channels=1, image_size=16, latent_dims=3, max_filters=8, depth=2)


def train_command(args):
    """The train command without main()'s error handling, to see the exception it raises."""
    _, values, given = parse(args)
    torch.set_num_threads(values["threads"])
    cmd_train(values, given)


def spawn(args):
    src = str(Path(torch_vae.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-m", "torch_vae", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for(path, proc, timeout=60):
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "no checkpoint was written in time"
        time.sleep(0.005)


# 1. Resume ---------------------------------------------------------------------------------


@pytest.mark.slow  # two 60-epoch runs each, 4-11 s a case
@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_then_resume_ends_bitwise_equal_to_uninterrupted_run(data, tmp_path, seed):
    epochs = 60
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(train_args(ref, data, epochs)) == 0
    stamps = [p.stat().st_mtime for p in (ref / "checkpoints").iterdir()]
    span = max(stamps) - min(stamps)  # how long epochs 2..60 took
    proc = spawn(train_args(run, data, epochs))
    wait_for(run / "ckpt.pt", proc)
    # A random moment after the first checkpoint, well before the run can end.
    time.sleep(random.Random(seed).uniform(0, 0.6 * span))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    saved = load_train_state(run)  # whatever moment the kill hit, the last state is intact
    assert 1 <= saved["epoch"] < epochs and saved["partial"] is None
    assert resume(run, data) == 0
    assert_same_run(run, ref)
    assert not list(run.rglob(".*.tmp")), "temporary files were left behind"


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
@pytest.mark.parametrize("where", ["mid-epoch", "evaluation", "after-checkpoint"])
def test_interrupt_saves_state_and_resume_is_exact(data, tmp_path, monkeypatch, where, schedule):
    """SIGINT arriving mid-epoch, during the evaluation or while an epoch's checkpoint is
    written: the state at that moment is saved, and resuming ends with the same weights. With a
    cosine schedule the saved learning rate is the scheduled one, not the configured one."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    flags = ("--lr_schedule", schedule, "--kl_warmup_epochs", "1.5")
    assert main(train_args(ref, data, 3, *flags)) == 0
    calls = {"loss": 0, "eval": 0, "save": 0}

    def kill_self():
        os.kill(os.getpid(), signal.SIGINT)

    def loss(*a, **k):
        calls["loss"] += 1
        if where == "mid-epoch" and calls["loss"] == 7:  # epoch 2 (5 steps an epoch), step 7
            kill_self()
        return real_loss(*a, **k)

    def evaluate(*a, **k):
        calls["eval"] += 1
        if where == "evaluation" and calls["eval"] == 2:
            kill_self()
        return real_eval(*a, **k)

    def save_model(*a, **k):
        calls["save"] += 1
        if where == "after-checkpoint" and calls["save"] == 3:  # epoch 2's first file
            kill_self()
        return real_save(*a, **k)

    real_loss, real_eval, real_save = (
        VAE.objective,
        train_mod.test_metrics,
        train_mod.save_model,
    )
    monkeypatch.setattr(VAE, "objective", loss)
    monkeypatch.setattr(train_mod, "test_metrics", evaluate)
    monkeypatch.setattr(train_mod, "save_model", save_model)
    with pytest.raises(TrainingInterrupted) as info:
        train_command(train_args(run, data, 3, *flags))
    assert "torch-vae train --resume" in str(info.value) and info.value.exit_code == 130
    state = load_train_state(run)
    expected = {
        # the signal lands inside step 7 (epoch 2's batch 1), which completes; then it stops
        "mid-epoch": (1, 7, 2),
        "evaluation": (1, 10, 5),  # all of epoch 2's batches done, not yet evaluated
        "after-checkpoint": (2, 10, None),  # epoch 2 was saved completely first
    }[where]
    partial = state["partial"]
    assert (state["epoch"], state["step"], partial and partial["batch"]) == expected
    monkeypatch.undo()
    assert resume(run, data) == 0
    assert_same_run(run, ref)


@pytest.mark.slow  # a subprocess and two 30-epoch runs, 3-9 s a case
@pytest.mark.parametrize(
    "sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_signal_to_cli_saves_state_and_exits_with_resume_hint(data, tmp_path, sig, code):
    ref, run = tmp_path / "ref", tmp_path / "run"
    epochs = 30
    proc = spawn(train_args(run, data, epochs))
    wait_for(run / "ckpt.pt", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    name = signal.Signals(sig).name
    assert lines[0].startswith(f"torch-vae: stopped by {name} at step ")
    assert f"continue with: torch-vae train --resume {run} --data_dir {data} --threads " in lines[0]
    state = load_train_state(run)
    assert 1 <= state["epoch"] < epochs
    assert resume(run, data) == 0
    assert main(train_args(ref, data, epochs)) == 0
    assert_same_run(run, ref)


CTRL_C_WHILE_PYTORCH_LOADS = """
import builtins, os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's foreground command
import torch_vae.command as command
assert "torch" not in sys.modules, "importing the command's entry point imported PyTorch"
real_import = builtins.__import__
def import_(name, *args, **kwargs):
    if name == "torch":  # the user's Ctrl-C, while PyTorch loads
        os.kill(os.getpid(), signal.SIGINT)
    return real_import(name, *args, **kwargs)
builtins.__import__ = import_
sys.argv = ["torch-vae", "--version"]
command.run()
"""


def test_ctrl_c_while_pytorch_loads_says_interrupted_without_traceback():
    proc = subprocess.run([sys.executable, "-c", CTRL_C_WHILE_PYTORCH_LOADS],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "torch-vae: interrupted\n"
    assert "torch-vae 0" not in proc.stdout  # the command did not go on


def test_resume_extends_epochs_and_checks_flags(data, tmp_path, capsys):
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(train_args(ref, data, 3)) == 0
    assert main(train_args(run, data, 2)) == 0
    capsys.readouterr()
    # finished: nothing to do unless --epochs grows
    assert resume(run, data) == 1
    assert (
        "already finished (2 of --epochs 2, 10 steps); to train it further, pass a larger --epochs"
        in one_line(capsys)
    )
    assert resume(run, data, "--max_steps", "10") == 1  # all its epochs done: --epochs first
    assert one_line(capsys).endswith(
        "(2 of --epochs 2, 10 steps); to train it further, pass a larger --epochs and a larger "
        "--max_steps (or --max_steps 0)"
    )
    assert resume(run, data, "--epochs", "1") == 1  # fewer epochs than its own: never shortened
    said = one_line(capsys)
    assert "--epochs 1 is fewer than the run's own 2: a resume may raise --epochs" in said
    assert said.endswith(
        f"the weights of its last finished epoch are in {run / 'model.safetensors'}"
    )
    # flags that describe the run must agree with it
    assert resume(run, data, "--latent_dims", "4", "--epochs", "3") == 1
    assert "--latent_dims 4 does not match the run" in one_line(capsys)
    assert resume(run, data, "--lr", "0.1", "--epochs", "3") == 1
    assert "--lr 0.1 does not match the run" in one_line(capsys)
    assert resume(run, data, "--run_dir", str(tmp_path / "x"), "--epochs", "3") == 1
    assert "--run_dir cannot be combined with --resume" in one_line(capsys)
    # repeating the run's own values is fine; --epochs extends it
    assert resume(run, data, "--latent_dims", "3", "--dataset", "mnist", "--epochs", "3") == 0
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 3
    assert_same_run(run, ref)


def test_a_resume_from_another_folder_reads_the_data_folder_the_run_read(
    data, tmp_path, monkeypatch, caplog
):
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    assert main(train_args(run, data, 1)) == 0
    assert json.loads((run / "config.json").read_text())["data_dir"] == str(data)
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # its default data folder, ./data, holds nothing
    monkeypatch.delenv("TORCH_VAE_DATA", raising=False)
    caplog.set_level("INFO")
    args = ["train", "--resume", str(run), "--epochs", "2", "--threads", "1", "--cpu"]
    assert main(args) == 0, caplog.text
    assert f"data folder (downloads and caches): {data}, the one the run used" in caplog.text
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]
    assert not (elsewhere / "data").exists()  # neither downloaded nor cached again here
    # --data_dir and $TORCH_VAE_DATA say where, over the run's own folder
    assert plan_resume(run, 3, lock_folder=False).data_dir == data
    assert plan_resume(run, 3, data_dir=tmp_path, lock_folder=False).data_dir == tmp_path
    monkeypatch.setenv("TORCH_VAE_DATA", str(tmp_path / "other"))
    assert plan_resume(run, 3, lock_folder=False).data_dir is None


def one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("torch-vae: error: "), err
    return err[0]


# 5. Run folders ----------------------------------------------------------------------------


def test_python_train_gives_the_command_s_run_and_resumes_it(data, tmp_path):
    """torch_vae.train with the configs the TINY flags describe writes the run the command
    writes, bit for bit, and its resume= continues it as the command's --resume does."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(train_args(ref, data, 2)) == 0
    torch.set_num_threads(1)
    model = ModelConfig(latent_dims=3, max_filters=8, image_size=16, depth=2)
    config = torch_vae.TrainConfig(dataset="mnist", batchsize=8, epochs=2)
    trained = torch_vae.train(model, config, run_dir=run, data_dir=data, device="cpu",
                              progress=False)  # fmt: skip
    assert trained.run_dir == run and not trained.model.training
    assert trained.model.dataset == torch_vae.load_model(run).dataset == "mnist"
    assert_same_run(run, ref)
    assert resume(ref, data, "--epochs", "3") == 0
    torch_vae.train(resume=run, epochs=3, data_dir=data, device="cpu", progress=False)
    assert_same_run(run, ref)


def test_python_train_refuses_what_it_cannot_take_in_one_line(tmp_path):
    """A built model, dicts, and a model or config beside resume= (which would be ignored)."""
    config = torch_vae.TrainConfig(dataset="mnist")
    cases = [
        ((VAE(MODEL), config), {}, "not a built model"),
        (({"arch": "dcgan"}, config), {}, "not a dict"),
        ((MODEL, {"epochs": 1}), {}, "config must be a TrainConfig, not a dict"),
        ((MODEL,), {"resume": tmp_path / "run"}, "drop model and config"),
        ((None, config), {"resume": tmp_path / "run"}, "drop model and config"),
    ]
    for args, kwargs, said in cases:
        with pytest.raises(TypeError, match=said):
            torch_vae.train(*args, run_dir=tmp_path / "new", **kwargs)
    assert not (tmp_path / "new").exists()


def test_resume_needs_a_checkpoint(data, tmp_path, capsys):
    assert resume(tmp_path / "nowhere", data) == 1
    assert "no such run folder" in one_line(capsys)
    run = tmp_path / "run"
    run.mkdir()
    assert resume(run, data) == 1
    assert "has no config.json" in one_line(capsys)
    # a run killed before its first epoch ended: config.json but no ckpt.pt
    (run / "config.json").write_text(
        json.dumps({"model": MODEL.to_dict(), "train": TrainConfig(dataset="mnist").to_dict()})
    )
    assert resume(run, data) == 1
    said = one_line(capsys)
    assert "has no training state (ckpt.pt)" in said
    assert said.endswith(f": start it anew there: torch-vae train --run_dir {run} with its flags")
    # a model folder (weights, no state): started again from, not resumed
    VAE(MODEL).save_pretrained(tmp_path / "weights")
    (tmp_path / "weights" / "model.safetensors").rename(run / "model.safetensors")
    assert resume(run, data) == 1
    said = one_line(capsys)  # weights but no state: a model folder, or a state whose save failed
    assert "never finished an epoch" not in said and "failed to save (a full disk)" in said
    assert said.endswith(f"start a new run from its weights: torch-vae train --config "
                         f"{run / 'config.json'} --init_from {run / 'model.safetensors'} (the "
                         "run's flags; --epochs for fewer epochs)")  # fmt: skip
    assert resume(run / "config.json", data) == 1  # a file of the run, not the run
    assert one_line(capsys).endswith(
        f"is a file; --resume takes the run's folder (the one holding it: {run.resolve()})"
    )
    (run / "config.json").write_text('{"model": {"latent_dims": "eight"}, "train": {}}')
    assert resume(run, data) == 1
    assert "--latent_dims must be a positive integer" in one_line(capsys)


def test_new_run_into_resumable_folder_is_refused(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(run, data, 1)) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(train_args(run, data, 2)) == 1
    assert "already exists" in one_line(capsys)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


# 2. Atomic writes --------------------------------------------------------------------------


def crash_midway(real_writer, path_arg):
    """A writer that writes half a file to the temporary path, then fails (a full disk, a
    crash)."""

    def writer(*args, **kwargs):
        path = Path(args[path_arg])
        path.write_bytes(b"\x00" * 100)
        raise OSError(28, "No space left on device")

    return writer


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return VAE(MODEL)


def test_crash_while_saving_weights_keeps_previous_file(tmp_path, monkeypatch):
    from torch_vae.io import weights as checkpoint

    path = save_model(tiny_model(0), tmp_path / "m.safetensors")
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint, "save_file", crash_midway(checkpoint.save_file, 1))
    with pytest.raises(OSError):
        save_model(tiny_model(1), path)
    assert path.read_bytes() == before
    assert load_model(path).config == MODEL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_crash_while_saving_training_state_keeps_previous_file(tmp_path, monkeypatch):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters())
    gen = torch.Generator().manual_seed(0)
    save_train_state(tmp_path, model=model, opt=opt, gen=gen, device=torch.device("cpu"),
                     epoch=3, step=30, n_train=40)  # fmt: skip
    before = (tmp_path / "ckpt.pt").read_bytes()
    monkeypatch.setattr(torch, "save", crash_midway(torch.save, 1))
    with pytest.raises(OSError):
        save_train_state(tmp_path, model=model, opt=opt, gen=gen, device=torch.device("cpu"),
                         epoch=4, step=40, n_train=40)  # fmt: skip
    assert (tmp_path / "ckpt.pt").read_bytes() == before
    assert load_train_state(tmp_path)["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_interrupted_write_of_any_file_keeps_previous_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"good": true}')
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_text('{"half')
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing
    assert json.loads(path.read_text()) == {"good": True}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_crash_while_writing_cache_keeps_previous_cache(mnist_dir, monkeypatch):
    from torch_vae.data import cache

    first = load_split("mnist", "test", 16, mnist_dir, progress=False).copy()
    npy = mnist_dir / "cache" / "mnist-test-16.npy"
    before = npy.read_bytes()
    npy.with_suffix(".json").unlink()  # force a rebuild, whose write then fails midway
    real = cache._map_file

    def fails_midway(f, shape):  # the decoding dies after writing part of the new file
        real(f, shape)[:1] = 0
        raise ZeroDivisionError

    with monkeypatch.context() as patch:
        patch.setattr(cache, "_map_file", fails_midway)
        with pytest.raises(ZeroDivisionError):
            load_split("mnist", "test", 16, mnist_dir, progress=False)
    assert npy.read_bytes() == before
    assert np.array_equal(load_split("mnist", "test", 16, mnist_dir, progress=False), first)


def test_torn_metrics_line_is_dropped_on_resume(data, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(train_args(ref, data, 3)) == 0
    assert main(train_args(run, data, 2)) == 0
    # a crash after epoch 3's metrics line was half appended, before its checkpoint
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "step": 15, "train_lo')
    assert resume(run, data, "--epochs", "3") == 0
    assert_same_run(run, ref)


# 4. Non-finite losses and weights ----------------------------------------------------------


def train_tiny(run, data_dir, epochs):
    cfg = TrainConfig(dataset="mnist", epochs=epochs, batchsize=8)
    images = {s: torch.from_numpy(load_split("mnist", s, 16, data_dir, False)) for s in SPLITS}
    plan = RunPlan(run, MODEL, cfg)
    data = RunData(images["train"], None, images["test"], "test")
    return train_mod.run_plan(plan, data, None, torch.device("cpu"), progress=False)


SPLITS = ("train", "test")


def good_epoch_kept(run, ref):
    """Only epoch 1's files exist, and they hold the same weights as a 1-epoch run."""
    assert load_train_state(run)["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_001.safetensors"]
    for path in (run, run / "checkpoints" / "epoch_001.safetensors"):
        for k, v in load_model(path).state_dict().items():
            assert torch.equal(v, weights(ref)[k])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(mnist_dir, tmp_path, monkeypatch):
    ref, run = tmp_path / "ref", tmp_path / "run"
    train_tiny(ref, mnist_dir, 1)
    real = VAE.objective
    calls = []

    def loss(*a, **k):
        out = real(*a, **k)
        calls.append(1)
        if len(calls) == 8:  # epoch 2, step 8 (5 steps an epoch)
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(VAE, "objective", loss)
    with pytest.raises(TorchVaeError, match=r"loss became nan at epoch 2, step 8.*last good ch"):
        train_tiny(run, mnist_dir, 3)
    good_epoch_kept(run, ref)


def test_non_finite_weights_are_never_saved(mnist_dir, tmp_path, monkeypatch):
    ref, run = tmp_path / "ref", tmp_path / "run"
    train_tiny(ref, mnist_dir, 1)
    real = VAE.inference_copy  # the evaluation's copy of the training model
    calls = []

    def evaluated_copy(model):
        calls.append(1)
        if len(calls) == 2:  # the end of epoch 2: break a weight just before the save
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("inf")
        return real(model)

    monkeypatch.setattr(VAE, "inference_copy", evaluated_copy)
    with pytest.raises(TorchVaeError, match="weights became non-finite .* at epoch 2"):
        train_tiny(run, mnist_dir, 3)
    good_epoch_kept(run, ref)


def test_nan_in_first_epoch_says_nothing_was_saved(mnist_dir, tmp_path, monkeypatch):
    """The losses are read every few steps: the error still names the first bad one."""
    real = VAE.objective

    def loss(*a, **k):
        out = real(*a, **k)
        return {**out, "loss": out["loss"] * np.inf}

    monkeypatch.setattr(VAE, "objective", loss)
    with pytest.raises(TorchVaeError, match="loss became inf at epoch 1, step 1.*no checkpoint"):
        train_tiny(tmp_path / "run", mnist_dir, 2)
    assert not (tmp_path / "run" / "ckpt.pt").exists()


# 6. Loading never runs code ----------------------------------------------------------------


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zipped", [True, False])
def test_malicious_training_state_is_refused_without_running_it(tmp_path, capsys, zipped):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(
        json.dumps({"model": MODEL.to_dict(), "train": TrainConfig(dataset="mnist").to_dict()})
    )
    payload = {"format": "torch-vae-train-state", "optimizer": Evil(marker), "epoch": 1}
    torch.save(payload, run / "ckpt.pt", _use_new_zipfile_serialization=zipped)
    with pytest.raises(TorchVaeError, match="refusing to load .*ckpt.pt.*posix.system"):
        load_train_state(run)
    assert resume(run, tmp_path) == 1
    assert "could run code" in one_line(capsys)
    assert not marker.exists()


def test_old_style_training_state_is_explained(tmp_path):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters())
    torch.save({"optimizer": opt.state_dict(), "epoch": 1, "step": 5}, tmp_path / "ckpt.pt")
    with pytest.raises(TorchVaeError, match="earlier torch-vae .* cannot be resumed"):
        load_train_state(tmp_path)


def test_training_state_from_another_model_is_refused(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(run, data, 1)) == 0
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["latent_dims"] = 4
    (run / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    assert resume(run, data, "--epochs", "2") == 1
    assert "belongs to a different model" in one_line(capsys)


# 8. Dataset cache --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        lambda npy, meta: meta.write_text("{not json"),
        lambda npy, meta: meta.write_text("[1, 2, 3]"),
        lambda npy, meta: meta.write_bytes(b"\xff\xfe\x00"),
        lambda npy, meta: meta.write_text(json.dumps({**json.loads(meta.read_text()), "shape": 7})),
        lambda npy, meta: npy.write_bytes(b""),
        lambda npy, meta: npy.write_bytes(npy.read_bytes()[:-1]),
        # a consistent cache of the wrong image size (e.g. copied from elsewhere)
        lambda npy, meta: (
            np.save(npy, np.zeros((20, 8, 8, 1), np.uint8)),
            meta.write_text(
                json.dumps(
                    {**json.loads(meta.read_text()), "shape": [20, 8, 8, 1], "sha256": sha(npy)}
                )
            ),
        ),
    ],
)
def test_damaged_cache_is_rebuilt(mnist_dir, damage):
    first = load_split("mnist", "test", 16, mnist_dir, progress=False).copy()  # not the map
    npy = mnist_dir / "cache" / "mnist-test-16.npy"
    damage(npy, npy.with_suffix(".json"))
    assert np.array_equal(load_split("mnist", "test", 16, mnist_dir, progress=False), first)
    # and the rebuilt cache is whole again
    meta = json.loads(npy.with_suffix(".json").read_text())
    assert meta["shape"] == [20, 16, 16, 1] and meta["sha256"] == sha(npy)


def sha(npy):
    import hashlib

    return hashlib.sha256(np.load(npy).tobytes()).hexdigest()


def test_run_stopped_during_its_last_evaluation_resumes_to_saved_weights(
    mnist_dir, tmp_path, monkeypatch
):
    """A signal during the evaluation after the last step (--max_steps reached) saves the state
    without weights or metrics; resuming with the same --max_steps evaluates and saves them
    instead of calling the run finished."""
    from torch_vae.cli import main

    run = tmp_path / "run"
    args = ["train", "--dataset", "mnist", "--data_dir", str(mnist_dir), "--run_dir", str(run),
            "--image_size", "16", "--latent_dims", "2", "--max_filters", "8", "--batchsize", "8",
            "--epochs", "2", "--max_steps", "3", "--quiet"]  # fmt: skip
    real = train_mod.test_metrics
    monkeypatch.setattr(train_mod, "test_metrics", lambda *a, **k: None)  # as if stopped
    assert main(args) == 130
    assert not (run / "model.safetensors").exists()
    assert load_train_state(run)["step"] == 3
    monkeypatch.setattr(train_mod, "test_metrics", real)
    resume = ["train", "--resume", str(run), "--data_dir", str(mnist_dir), "--quiet"]
    assert main(resume) == 0
    assert (run / "model.safetensors").exists()
    assert [r["step"] for r in read_metrics(run)] == [3]
    # now it is finished: a second resume is refused, as for any finished run
    assert main(resume) == 1


def test_a_signal_the_process_was_started_ignoring_stays_ignored_while_training():
    """nohup, or `cmd &` in a script, starts a process with SIGINT ignored: training leaves it
    so (a Ctrl-C at the terminal is not for it) and still saves and stops on SIGTERM."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with train_mod.StopOnSignal() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == stop._handle
            os.kill(os.getpid(), signal.SIGINT)
            assert not stop.requested()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # the handler runs between bytecodes of the main thread
            assert stop.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_in_a_job_a_signal_within_a_second_of_the_last_is_the_launcher_s_echo(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    clock = iter([10.0, 10.2, 11.5, 11.6, 13.0, 20.0, 20.1])  # Ctrl-C, echo, Ctrl-C, echo...
    monkeypatch.setattr(train_mod.time, "monotonic", lambda: next(clock))
    stop = train_mod.StopOnSignal()
    for expected in (1, 1, 2, 2):
        stop._handle(signal.SIGINT, None)
        assert stop.count == expected
    with pytest.raises(KeyboardInterrupt):  # the third Ctrl-C of the user stops at once
        stop._handle(signal.SIGINT, None)


def test_alone_a_burst_of_signals_within_half_a_second_is_one_ctrl_c(monkeypatch):
    """Ctrl-C hammered or held: one press, so the state is saved (three presses in a tenth of a
    second stopped at once and saved nothing, removing a run in its first epoch)."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    clock = iter([20.0, 20.05, 20.1, 20.7, 20.8, 21.4])
    monkeypatch.setattr(train_mod.time, "monotonic", lambda: next(clock))
    alone = train_mod.StopOnSignal()
    for expected in (1, 1, 1, 2, 2):
        alone._handle(signal.SIGINT, None)
        assert alone.count == expected
    with pytest.raises(KeyboardInterrupt):  # a third press apart from the others
        alone._handle(signal.SIGINT, None)
    held = iter([30.0 + 0.03 * i for i in range(100)])  # the key held for 3 s: one press
    monkeypatch.setattr(train_mod.time, "monotonic", lambda: next(held))
    key = train_mod.StopOnSignal()
    try:
        for _ in range(100):
            key._handle(signal.SIGINT, None)
    except KeyboardInterrupt:
        pytest.fail(f"a held Ctrl-C stopped at once after {key.count} presses counted")
    assert key.count == 1


def test_a_resume_with_other_threads_than_the_run_s_says_its_numbers_differ(data, tmp_path, caplog):
    import logging

    run = tmp_path / "run"
    torch.set_num_threads(2)
    assert main(train_args(run, data, 1, "--threads", "2")) == 0
    with caplog.at_level(logging.WARNING, logger="torch_vae"):
        assert resume(run, data, "--epochs", "2") == 0  # resume() passes --threads 1
    assert "trained with 2 threads and goes on with 1" in caplog.text
    assert "--threads 2 for the same numbers" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="torch_vae"):
        assert resume(run, data, "--epochs", "3") == 0  # saved with 1 thread, 1 again: no word
    assert "goes on with" not in caplog.text


def test_a_resume_with_other_processes_than_the_run_s_says_its_numbers_differ(
    data, tmp_path, caplog
):
    """A 2-process run resumed by one process went on without a word (threads had one)."""
    import logging

    from torch_vae.training.state import state_digest

    run = tmp_path / "run"
    assert main(train_args(run, data, 1)) == 0
    state = torch.load(run / "ckpt.pt", weights_only=True)
    assert state["processes"] == 1
    state["processes"] = 2  # as a --nproc_per_node 2 job saves it
    state["digest"] = state_digest({k: v for k, v in state.items() if k != "digest"})
    torch.save(state, run / "ckpt.pt")
    with caplog.at_level(logging.WARNING, logger="torch_vae"):
        assert resume(run, data, "--epochs", "2") == 0
    assert "trained with 2 processes and goes on with 1" in caplog.text
    assert "--nproc_per_node 2 for the same numbers" in caplog.text


def test_a_write_that_fails_mid_run_says_how_to_go_on_from_the_state_saved(
    data, tmp_path, monkeypatch, capsys
):
    import errno

    real, calls = train_mod.save_model, []

    def full_from_epoch_2(model, path, *args, **kwargs):
        calls.append(path)
        if len(calls) > 2:  # epoch 1's checkpoint and weights went in; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(model, path, *args, **kwargs)

    monkeypatch.setattr(train_mod, "save_model", full_from_epoch_2)
    run = tmp_path / "run"
    assert main(train_args(run, data, 2)) == 1
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.startswith(f"torch-vae: error: cannot write {run / 'checkpoints'}")
    step = load_train_state(run)["step"]
    assert said.endswith(f"the training state of step {step} is saved; once the file can be "
                         f"written, continue with: torch-vae train --resume {run} --data_dir "
                         f"{data} --threads 1 (as many threads as now: the same numbers to the "
                         "bit)")  # fmt: skip
    monkeypatch.setattr(train_mod, "save_model", real)
    assert resume(run, data) == 0 and [r["epoch"] for r in read_metrics(run)] == [1, 2]


def test_resume_of_a_file_names_its_run_folder_only_where_it_is_in_one(trained, tmp_path, capsys):
    assert main(["train", "--resume", str(trained / "metrics.jsonl")]) == 1
    assert f"takes the run's folder (the one holding it: {trained.resolve()})" in (
        capsys.readouterr().err
    )
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    assert main(["train", "--resume", str(notes)]) == 1
    err = capsys.readouterr().err
    assert f"--resume {notes} is a file, not a run folder" in err and "holding it:" not in err


def test_a_resume_of_an_epoch_cut_short_by_max_steps_says_its_files_are_replaced(
    data, tmp_path, caplog
):
    run = tmp_path / "run"
    assert main(train_args(run, data, 2, "--max_steps", "3")) == 0  # 5 steps an epoch
    assert (run / "checkpoints" / "epoch_001.safetensors").is_file()  # of the 3 steps
    with caplog.at_level("INFO", logger="torch_vae"):
        assert resume(run, data, "--max_steps", "5") == 0
    assert ("epoch 1 was cut short by --max_steps: its checkpoint, picture and metrics line are "
            "replaced when it ends") in caplog.text  # fmt: skip


def test_an_interrupted_resume_of_an_epoch_cut_short_keeps_its_metrics_line(
    data, tmp_path, monkeypatch
):
    """The line of an epoch that --max_steps cut short stays until the epoch's end replaces it:
    a resume stopped before then left metrics.jsonl empty beside the epoch's weights."""
    run = tmp_path / "run"
    assert main(train_args(run, data, 2, "--max_steps", "3")) == 0  # 5 steps an epoch
    cut = read_metrics(run)
    assert [r["step"] for r in cut] == [3]
    real, calls = VAE.objective, []

    def objective(self, *a, **k):  # Ctrl-C during the resumed epoch's first step
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, *a, **k)

    monkeypatch.setattr(VAE, "objective", objective)
    assert resume(run, data, "--max_steps", "5") == 130
    assert read_metrics(run) == cut
    monkeypatch.undo()
    assert resume(run, data, "--max_steps", "5") == 0
    assert [(r["epoch"], r["step"]) for r in read_metrics(run)] == [(1, 5)]  # replaced, once


def test_a_young_run_measuring_far_worse_held_out_says_its_batch_norms_lag(caplog):
    from types import SimpleNamespace

    from torch_vae.training.loop import _say_early

    def said(step, train, held_out):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="torch_vae"):
            _say_early(SimpleNamespace(step=step, eval_prefix="val"), train, held_out)
        return caplog.text

    assert ("after only 30 steps the val loss is 1.9x the training loss: the batch norms' "
            "running statistics") in said(30, 274.1, 517.8)  # fmt: skip
    assert "batch norms" not in said(30, 274.1, 230.0)  # held-out no worse: nothing to say
    assert "batch norms" not in said(5000, 274.1, 517.8)  # a long run: something else
    # the gaussian loss can be negative: no ratio of such (-1603 against 1022 read "-0.6x")
    assert "batch norms" not in said(30, -1603.39, 1022.04)
    assert "batch norms" not in said(30, -2239.53, -1810.25)


def test_a_damaged_state_s_error_keeps_the_first_sentence_of_pytorch_s(tmp_path):
    from torch_vae.training.state import _damaged

    said = str(_damaged(tmp_path, tmp_path / "ckpt.pt", RuntimeError(
        "PytorchStreamReader failed reading zip archive: failed finding central directory. "
        "This is an internal miniz error. If you are seeing this error, there is most likely a "
        "bug")))  # fmt: skip
    assert ("(RuntimeError: PytorchStreamReader failed reading zip archive: failed finding "
            "central directory), so the run cannot resume") in said  # fmt: skip

"""Bad input and a hostile environment get one-line errors and never silently wrong results."""

import json
import logging
import math

import pytest
import torch

import fakedata
from runs import assert_same_run, resume, train_args
from torch_vae import VAE, ModelConfig, TorchVaeError, load_model, save_model
from torch_vae.cli import main


def test_raising_max_steps_on_resume_continues_the_cut_epoch(data, tmp_path):
    """5 steps per epoch: a run stopped by --max_steps 2 and resumed with --max_steps 4 ends
    bitwise equal to a run started with --max_steps 4 (the rest of epoch 1 is not skipped)."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(train_args(ref, data, 2, "--max_steps", "4")) == 0
    assert main(train_args(run, data, 2, "--max_steps", "2")) == 0
    assert resume(run, data, "--max_steps", "4") == 0
    assert_same_run(run, ref)


def test_resume_past_max_steps_is_refused(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(run, data, 2, "--max_steps", "2")) == 0
    assert resume(run, data) == 1
    err = capsys.readouterr().err
    assert (
        "already finished (2 of --max_steps 2, in epoch 1); to train it further, pass a larger "
        "--max_steps, or --max_steps 0 to train to --epochs 2" in err
    )
    assert resume(run, data, "--epochs", "3") == 1  # the cap still holds: said so again
    assert "or --max_steps 0 to train to --epochs 3" in capsys.readouterr().err
    # a --max_steps below the steps made is refused as such, the run's config untouched
    config = (run / "config.json").read_bytes()
    assert resume(run, data, "--max_steps", "1") == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("is at step 2, past --max_steps 1; pass a larger --max_steps to train it "
                        "further, or leave it out") and "\n" not in err  # fmt: skip
    assert (run / "config.json").read_bytes() == config


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_weights_with_non_finite_values_are_refused_at_load(tmp_path, bad, capsys):
    model = VAE(ModelConfig(image_size=16, latent_dims=2, max_filters=8, depth=2))
    with torch.no_grad():
        model.decoder.lin.weight[0, 0] = bad
    path = save_model(model, tmp_path / "m.safetensors", "mnist")
    with pytest.raises(TorchVaeError, match="holds NaN or infinite weights"):
        load_model(path)
    out = tmp_path / "samples"
    assert main(["generate", "--model", str(path), "--outdir", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN or infinite weights" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    """Weights (the safetensors writer replaces its temporary file) and JSON files alike."""
    import os

    from torch_vae.io.files import write_text_atomic

    old = os.umask(umask)
    try:
        model = VAE(ModelConfig(image_size=16, latent_dims=2, max_filters=8, depth=2))
        weights = save_model(model, tmp_path / "m.safetensors")
        write_text_atomic(tmp_path / "a.json", "{}")
        model.save_pretrained(tmp_path / "folder")
    finally:
        os.umask(old)
    for path in (weights, tmp_path / "a.json", tmp_path / "folder" / "model.safetensors",
                 tmp_path / "folder" / "config.json"):  # fmt: skip
        assert path.stat().st_mode & 0o777 == mode, path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_outdir_that_is_a_file_is_refused_before_work(tmp_path, capsys):
    model = VAE(ModelConfig(image_size=16, latent_dims=2, max_filters=8, depth=2))
    path = save_model(model, tmp_path / "m.safetensors", "mnist")
    (tmp_path / "taken").write_text("mine")
    args = ["generate", "--model", str(path), "--outdir", str(tmp_path / "taken"), "--quiet"]
    assert main(args) == 1
    assert "--outdir" in one_line_error(capsys) and (tmp_path / "taken").read_text() == "mine"


def test_report_that_is_a_folder_is_refused_before_work(trained, mnist_dir, tmp_path, capsys):
    (tmp_path / "reports").mkdir()
    args = ["evaluate", "--model", str(trained), "--data_dir", str(mnist_dir), "--iw_samples",
            "0", "--report", str(tmp_path / "reports"), "--quiet"]  # fmt: skip
    assert main(args) == 1
    assert "is a folder; give a file name" in one_line_error(capsys)


def test_full_disk_during_training_is_one_line_and_keeps_the_last_checkpoint(
    data,
    tmp_path,
    capsys,
    monkeypatch,
):
    import errno

    from torch_vae.training import loop as train_mod

    run = tmp_path / "run"
    assert main(train_args(run, data, 1)) == 0
    before = (run / "model.safetensors").read_bytes()
    real = train_mod.save_model

    def full(model, path, *a, **k):
        if "checkpoints" not in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(model, path, *a, **k)

    monkeypatch.setattr(train_mod, "save_model", full)
    assert resume(run, data, "--epochs", "2") == 1
    err = one_line_error(capsys)
    assert "No space left on device" in err and "free some space" in err and "intact" in err
    assert (run / "model.safetensors").read_bytes() == before
    monkeypatch.setattr(train_mod, "save_model", real)
    assert resume(run, data, "--epochs", "2") == 0  # once there is space, the run goes on


def test_two_runs_started_at_once_take_different_default_folders(tmp_path):
    """Choosing a default run folder makes it, so a second run planned before the first
    started writing takes NAME-2 instead of failing on a folder that is no longer empty."""
    from torch_vae.training.rundir import new_run_dir

    first = new_run_dir(tmp_path / "runs", "x")
    second = new_run_dir(tmp_path / "runs", "x")
    assert (first.name, second.name) == ("x", "x-2") and first.is_dir() and second.is_dir()


def test_run_that_fails_before_its_first_checkpoint_leaves_no_folder(
    data,
    tmp_path,
    monkeypatch,
    capsys,
):

    def broken(*a, **k):
        raise TorchVaeError("the first step failed")

    monkeypatch.setattr(VAE, "objective", broken)
    run = tmp_path / "run"
    assert main(train_args(run, data, 1)) == 1
    assert "the first step failed" in one_line_error(capsys)
    assert not run.exists()  # the name is free again
    monkeypatch.undo()
    assert main(train_args(run, data, 1)) == 0


def test_failure_after_a_checkpoint_keeps_the_run(data, tmp_path, monkeypatch):
    from torch_vae.training.state import load_train_state

    real, calls = VAE.objective, []

    def fails_in_epoch_2(*a, **k):  # 5 steps per epoch
        calls.append(1)
        if len(calls) > 5:
            raise TorchVaeError("broke in epoch 2")
        return real(*a, **k)

    monkeypatch.setattr(VAE, "objective", fails_in_epoch_2)
    run = tmp_path / "run"
    assert main(train_args(run, data, 2)) == 1
    assert load_train_state(run)["epoch"] == 1 and (run / "model.safetensors").is_file()
    monkeypatch.undo()
    assert resume(run, data) == 0


def test_absurd_thread_count_is_refused(capsys):
    assert main(["generate", "--model", "m", "--outdir", "o", "--threads", "100000"]) == 1
    assert "--threads 100000 is far more than this machine's" in one_line_error(capsys)


def test_samples_do_not_depend_on_the_batch_size(trained, tmp_path):
    """The same latents whatever the batch size; pixels may differ by a rounding step, since
    the convolution kernels sum in another order for another batch size."""
    import numpy as np
    from PIL import Image

    outs = []
    for batch in ("7", "1000"):
        out = tmp_path / f"b{batch}"
        args = ["generate", "--model", str(trained), "--nsamples", "20", "--outdir", str(out)]
        assert main([*args, "--batchsize", batch, "--quiet"]) == 0
        outs.append(np.stack([np.asarray(Image.open(out / f"sample_{i:05d}.png"), np.int16)
                              for i in range(20)]))  # fmt: skip
    assert np.abs(outs[0] - outs[1]).max() <= 1 and (outs[0] == outs[1]).mean() > 0.99


@pytest.mark.parametrize("dims", [1, 3, 8])
def test_latent_batches_do_not_depend_on_the_batch_size(dims, monkeypatch):
    from torch_vae.analysis import pictures as outputs

    model = VAE(ModelConfig(latent_dims=dims, image_size=16, max_filters=8, depth=2))

    def draw(n, batch):
        got = list(outputs.latent_batches(n, 5, batch, outputs.prior_draw(model)))
        starts = [s for s, _ in got]
        assert starts == sorted(starts) and all(len(z) <= batch for _, z in got)
        assert [s + len(z) for s, z in got][:-1] == starts[1:]  # no gap, no overlap
        return torch.cat([z for _, z in got])

    # up to one block, one torch.randn call, as before latents were drawn in blocks
    one_call = torch.randn(100, dims, generator=torch.Generator().manual_seed(5))
    assert torch.equal(draw(100, 7), one_call)
    monkeypatch.setattr(outputs, "LATENT_BLOCK", 32)  # several blocks in a small test
    ref = draw(100, 1000)
    for batch in (1, 7, 32):
        assert torch.equal(draw(100, batch), ref), batch


def test_generate_draws_latents_a_batch_at_a_time(trained, tmp_path, monkeypatch):
    """Memory does not grow with --nsamples: no draw is larger than one batch."""
    sizes = []
    real = torch.randn

    def recording(*size, **k):
        sizes.append(size[0] if isinstance(size[0], int) else size[0][0])
        return real(*size, **k)

    monkeypatch.setattr(torch, "randn", recording)
    out = tmp_path / "s"
    monkeypatch.setattr("torch_vae.analysis.pictures.LATENT_BLOCK", 16)
    args = ["generate", "--model", str(trained), "--nsamples", "50", "--batchsize", "8"]
    assert main([*args, "--outdir", str(out), "--quiet"]) == 0
    assert len(list(out.glob("sample_*.png"))) == 50
    assert max(sizes) == 16  # pictures.LATENT_BLOCK, not --nsamples


def test_decoder_sigma_does_not_depend_on_the_thread_count():
    """Evaluation reports are bitwise the same for any --threads (the sigma of the NLL summed
    a whole batch of pixels in an order that depended on it)."""
    from torch_vae.evaluation.likelihood import calibrate_sigma

    torch.manual_seed(0)
    model = VAE(ModelConfig(in_channels=3, image_size=64, latent_dims=4, max_filters=16)).eval()
    images = torch.randint(0, 256, (1000, 64, 64, 3), dtype=torch.uint8)
    threads = torch.get_num_threads()
    try:
        sigmas = []
        for n in (1, 2):
            torch.set_num_threads(n)
            sigmas.append(calibrate_sigma(model, images, torch.device("cpu")))
    finally:
        torch.set_num_threads(threads)
    assert sigmas[0] == sigmas[1]


def test_model_too_large_for_memory_is_refused_before_allocating(data, tmp_path, capsys):
    run = tmp_path / "run"
    args = train_args(run, data, 1) + ["--max_filters", "65536", "--latent_dims", "65536"]
    assert main(args) == 1
    err = one_line_error(capsys)
    assert "GiB of memory on cpu" in err and "use a smaller --max_filters" in err
    assert not run.exists()


@pytest.mark.slow  # a subprocess that trains a wide model, 5 s
def test_training_memory_estimate_is_close_to_a_real_step():
    """The estimate is within a factor of 3 of what one training step takes (peak RSS)."""
    import subprocess
    import sys

    from torch_vae.models import training_memory

    config = ModelConfig(image_size=64, latent_dims=8, max_filters=256)
    # VmHWM belongs to the new process image; ru_maxrss would carry over pytest's own peak
    # through exec and read 0 whenever pytest is the larger of the two
    code = (
        "import torch\n"
        "from torch_vae import VAE, ModelConfig\n"
        "from torch_vae.models.losses import vae_loss\n"
        "def hwm():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        "            return int(line.split()[1]) * 1024\n"
        "base = hwm()\n"
        "m = VAE(ModelConfig(image_size=64, latent_dims=8, max_filters=256)).train()\n"
        "opt = torch.optim.AdamW(m.parameters())\n"
        "x = torch.rand(256, 1, 64, 64)\n"
        "for _ in range(2):\n"
        "    vae_loss(m(x), x, 1.0, 'mse')['loss'].backward(); opt.step()\n"
        "print(hwm() - base)\n"
    )
    used = int(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )  # fmt: skip
    estimate = training_memory(config, 256)
    assert used / 3 < estimate < used * 3, (estimate, used)


def test_average_removes_the_temporary_folder_a_killed_average_left(
    train_tiny, mnist_dir, tmp_path
):
    import os

    run = train_tiny(tmp_path / "run")
    out = tmp_path / "models" / "avg"
    killed = out.parent / ".avg.k1ll3d"  # as tempfile.mkdtemp names it, then SIGKILL
    (killed / "images").mkdir(parents=True)
    (killed / "model.safetensors").write_bytes(b"half")
    os.utime(killed, (0, 0))
    recent = out.parent / ".avg.running"  # another average still writing: left alone
    recent.mkdir()
    args = ["average", str(run), "--last", "2", "--out", str(out), "--data_dir", str(mnist_dir)]
    assert main([*args, "--quiet"]) == 0
    assert (out / "model.safetensors").is_file() and not killed.exists() and recent.exists()


def test_a_split_too_small_for_validation_images_says_it_measures_on_the_test_split(
    tmp_path, caplog
):
    """9 training images hold out no validation image (a tenth is less than one): the run
    measures each epoch on the test split, and now says so (it did without a word)."""
    folder = fakedata.write_folder(tmp_path / "ten", n=10)
    flags = ["train", "--dataset", f"folder:{folder}", "--data_dir", str(tmp_path / "data"),
             "--image_size", "16", "--arch", "dcgan", "--depth", "2", "--max_filters", "8",
             "--epochs", "1", "--batchsize", "4", "--quiet", "--cpu"]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="torch_vae"):
        assert main([*flags, "--run_dir", str(tmp_path / "run")]) == 0
    assert "the 9 training images are too few to hold out validation images" in caplog.text
    assert "measured on the test split instead" in caplog.text
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "test_loss" in record and "val_loss" not in record


def test_val_images_above_a_tenth_of_the_split_is_said_to_be_capped(train_tiny, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="torch_vae"):
        run = train_tiny(tmp_path / "run", "--val_images", "20")
    assert "--val_images 20 is more than a tenth of the 40 training images: 4 are held out" in (
        caplog.text
    )
    assert json.loads((run / "config.json").read_text())["split"]["validation_images"] == 4
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="torch_vae"):
        train_tiny(tmp_path / "default")  # the default's cap on a small split: no warning
    assert "--val_images" not in caplog.text


def test_a_write_over_the_file_size_limit_names_the_limit():
    """EFBIG (ulimit -f) said "check the path", which is not what is wrong."""
    import errno

    from torch_vae.errors import describe_os_error

    said = describe_os_error(OSError(errno.EFBIG, "File too large", "run/ckpt.pt"))
    assert said.startswith("cannot write run/ckpt.pt: File too large (a limit on the size of ")
    assert "ulimit -f" in said and "check the path" not in said


def test_a_failed_write_names_the_file_not_its_temporary_and_says_write():
    import errno

    from torch_vae.errors import describe_os_error

    said = describe_os_error(OSError(errno.ENOSPC, "No space left on device",
                                     "run/.model.safetensors.uqpmef7d.tmp"))  # fmt: skip
    assert said.startswith("cannot write run/model.safetensors: No space left on device")
    said = describe_os_error(OSError(errno.EACCES, "Permission denied", "run/.x.json.ab_1cd23.tmp"))
    assert said.startswith("cannot access run/x.json: Permission denied (check its permissions")
    said = describe_os_error(OSError(errno.EACCES, "Permission denied", "run/.hidden.tmp"))
    assert said.startswith("cannot access run/.hidden.tmp:")  # a user's own file, as it is

"""The experiment loggers (training/loggers.py): a tiny run with --logger tensorboard,mlflow,
read back with TensorBoard's EventAccumulator and MLflow's client; a resume continues both runs
without a step twice, also after a stop that lost an epoch; a missing package and an unknown
name are refused in one line before any training."""

import json
import shutil
import subprocess
import sys
import time

import pytest

from runs import resume, train_args
from torch_vae.cli import main
from torch_vae.training.loggers import EPOCH_PICTURE, Loggers
from torch_vae.training.rundir import read_metrics

LOGGERS = ["--logger", "tensorboard,mlflow"]


def error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("torch-vae: error: "), stderr
    return lines[0]


def tensorboard_events(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()  # purges what a stopped run logged after its last checkpoint, as TB does
    return events


def mlflow_run(run):
    from mlflow.tracking import MlflowClient

    saved = json.loads((run / "mlflow.json").read_text())
    assert saved["tracking_uri"] == (run / "mlruns").resolve().as_uri()
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    return client, client.get_run(saved["run_id"])


def check_tensorboard(run):
    """Every epoch's metrics as metrics.jsonl has them (float32), at the epoch's step; the
    step losses once per step, in order; each epoch's picture."""
    events, records = tensorboard_events(run), read_metrics(run)
    steps = [r["step"] for r in records]
    for key in ("train_loss", "train_kl", "val_loss", "val_mse", "epoch_seconds"):
        got = events.Scalars(f"epoch/{key}")
        assert [e.step for e in got] == steps, key
        assert [e.value for e in got] == pytest.approx([r[key] for r in records], rel=1e-6)
    for key in ("loss", "recon", "kl", "lr", "beta"):
        logged = [e.step for e in events.Scalars(f"step/{key}")]
        assert logged == sorted(set(logged)) and logged[-1] == steps[-1], key
    pictures = events.Images(EPOCH_PICTURE)
    assert [e.step for e in pictures] == steps and pictures[0].width > 0 < pictures[0].height
    assert "config/text_summary" in events.Tags()["tensors"]


def check_mlflow(run, epochs, keys=("train_loss", "val_loss", "val_kl", "train_img_per_s")):
    """One MLflow run, finished: the config as params (a resume's new --epochs as a tag), each
    epoch's metrics ``keys`` exactly, every step once, the pictures and the final weights."""
    client, got = mlflow_run(run)
    config = json.loads((run / "config.json").read_text())
    params = {f"{s}.{k}": str(v) for s, key in (("model", "model"), ("train", "train"))
              for k, v in config[key].items()}  # fmt: skip
    assert {k: v for k, v in got.data.params.items() if k != "train.epochs"} == {
        k: v for k, v in params.items() if k != "train.epochs"
    }
    assert got.data.params["train.epochs"] == "1" and got.info.status == "FINISHED"
    assert got.data.tags["resumed/train.epochs"] == str(epochs)
    records = read_metrics(run)
    for key in keys:
        history = client.get_metric_history(got.info.run_id, f"epoch/{key}")
        assert [(m.step, m.value) for m in history] == [(r["step"], r[key]) for r in records]
    steps = [m.step for m in client.get_metric_history(got.info.run_id, "step/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == records[-1]["step"]
    pictures = [f.path for f in client.list_artifacts(got.info.run_id, EPOCH_PICTURE)]
    assert pictures == [f"{EPOCH_PICTURE}/step_{r['step']:08d}.png" for r in records]
    assert [f.path for f in client.list_artifacts(got.info.run_id, "model")] == [
        "model/model.safetensors"
    ]
    return got.info.run_id


def test_tensorboard_and_mlflow_follow_a_run_and_its_resumes(mnist_dir, tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    run = tmp_path / "run"
    assert main(train_args(run, mnist_dir, 1, *LOGGERS)) == 0
    first_id = json.loads((run / "mlflow.json").read_text())["run_id"]
    shutil.copy(run / "ckpt.pt", tmp_path / "epoch1.pt")
    assert resume(run, mnist_dir, "--epochs", "2") == 0
    metrics = read_metrics(run)
    check_tensorboard(run)
    assert check_mlflow(run, 2) == first_id
    # a stop that lost epoch 2 after it was logged (its state not saved): trained again, and
    # logged once, in the same TensorBoard folder and MLflow run
    shutil.copy(tmp_path / "epoch1.pt", run / "ckpt.pt")
    assert resume(run, mnist_dir, "--epochs", "2") == 0
    for again, before in zip(read_metrics(run), metrics, strict=True):  # the same, to the bit
        assert again["val_loss"] == before["val_loss"] and again["step"] == before["step"]
    check_tensorboard(run)
    # MLflow keeps what the stopped run logged of a step (here the same losses; its timings)
    assert check_mlflow(run, 2, ("train_loss", "val_loss", "val_kl")) == first_id
    assert len(list((run / "tensorboard").iterdir())) == 3  # one event file per start


def test_step_losses_are_read_at_every_tenth_step_of_the_run_across_epochs_and_resumes(
    mnist_dir, tmp_path, monkeypatch
):
    from torch_vae.training import loop

    read, real = [], loop._read_losses

    def recording(lp, epoch, ep, pending):
        if pending:
            read.append(pending[-1][0])
        return real(lp, epoch, ep, pending)

    monkeypatch.setattr(loop, "_read_losses", recording)
    run = tmp_path / "run"
    assert main(train_args(run, mnist_dir, 1, "--batchsize", "3", "--val_images", "4")) == 0
    assert resume(run, mnist_dir, "--epochs", "2") == 0
    ends = [r["step"] for r in read_metrics(run)]
    assert ends == [12, 24]  # 36 images in batches of 3: not a multiple of 10 an epoch
    assert read == [10, 12, 20, 24]  # not 10, 12, 22, 24: the tenth steps of the run


def test_an_mlflow_server_that_is_not_there_is_told_in_seconds(mnist_dir, tmp_path, capsys,
                                                                monkeypatch):  # fmt: skip
    pytest.importorskip("mlflow")
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)  # the logger's own, not a value given
    run = tmp_path / "run"
    start = time.perf_counter()
    args = train_args(run, mnist_dir, 1, "--logger", "mlflow", "--mlflow_uri",
                      "http://127.0.0.1:9")  # fmt: skip
    assert main(args) == 1
    assert time.perf_counter() - start < 30  # MLflow's own retries take minutes
    assert "cannot start the mlflow logger (" in error_line(capsys.readouterr().err)
    assert not run.exists()


def test_an_mlflow_database_store_without_sqlalchemy_says_what_to_install(
    mnist_dir, tmp_path, capsys, monkeypatch
):
    pytest.importorskip("mlflow")
    from torch_vae.training import loggers

    monkeypatch.setattr(loggers, "_installed", lambda name: name != "sqlalchemy")
    run = tmp_path / "run"
    args = train_args(run, mnist_dir, 1, "--logger", "mlflow", "--mlflow_uri",
                      f"sqlite:///{tmp_path}/mlflow.db")  # fmt: skip
    assert main(args) == 1
    line = error_line(capsys.readouterr().err)
    assert "is a database store, which needs the full MLflow package (pip install mlflow" in line
    assert not run.exists()


def test_a_resume_whose_mlflow_store_is_gone_says_how_to_go_on(mnist_dir, tmp_path, capsys):
    pytest.importorskip("mlflow")
    run = tmp_path / "run"
    assert main(train_args(run, mnist_dir, 1, "--logger", "mlflow")) == 0
    first_id = json.loads((run / "mlflow.json").read_text())["run_id"]
    shutil.rmtree(run / "mlruns")
    capsys.readouterr()
    assert resume(run, mnist_dir, "--epochs", "2") == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith("torch-vae: error: cannot reopen this run's MLflow run ")
    assert line.endswith(f"delete {run / 'mlflow.json'} to log the rest of the run as a new "
                         "MLflow run")  # fmt: skip
    (run / "mlflow.json").unlink()  # as it says: a new MLflow run, in a store made anew
    # (in a process of its own: MLflow keeps each store's state for the process's life)
    again = subprocess.run([sys.executable, "-m", "torch_vae", "train", "--resume", str(run),
                            "--epochs", "2", "--data_dir", str(mnist_dir), "--quiet"],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads((run / "mlflow.json").read_text())["run_id"] != first_id


def test_loggers_write_nothing_into_a_plain_run(mnist_dir, tmp_path):
    """Without --logger, only metrics.jsonl: the run folder is as before."""
    run = tmp_path / "run"
    assert main(train_args(run, mnist_dir, 1)) == 0
    assert not any((run / name).exists() for name in ("tensorboard", "mlruns", "mlflow.json"))
    assert json.loads((run / "config.json").read_text())["train"]["logger"] == "jsonl"


@pytest.mark.parametrize("name,module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_a_missing_package_is_told_before_training(name, module, mnist_dir, tmp_path,
                                                   monkeypatch, capsys):  # fmt: skip
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    run = tmp_path / "run"
    assert main(train_args(run, mnist_dir, 1, "--logger", name)) == 1
    line = error_line(capsys.readouterr().err)
    assert f"--logger {name} needs the {module} package: pip install 'torch-vae[{name}]'" in line
    assert not run.exists()  # nothing trained, nothing left behind


def test_an_unknown_logger_is_refused_with_the_valid_names(mnist_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(run, mnist_dir, 1, "--logger", "tensorboard,wandb")) == 1
    line = error_line(capsys.readouterr().err)
    assert "unknown logger 'wandb'; the loggers are jsonl, tensorboard, mlflow" in line
    assert not run.exists()
    assert main(train_args(run, mnist_dir, 1, "--mlflow_uri", str(tmp_path / "store"))) == 1
    assert "add --logger mlflow" in error_line(capsys.readouterr().err)


class Recorder:
    def __init__(self, fail_on=None):
        self.calls, self.fail_on = [], fail_on

    def __getattr__(self, method):
        def call(*args):
            if method == self.fail_on:
                raise OSError(28, "No space left on device")
            self.calls.append((method, *args))

        return call


def test_the_fan_out_drops_a_failing_logger_with_a_warning(caplog):
    good, bad = Recorder(), Recorder(fail_on="scalars")
    loggers = Loggers({"good": good, "bad": bad})
    loggers.params({"train.lr": "0.1"})
    loggers.scalars(3, {"step/loss": 1.0})
    loggers.scalars(6, {"step/loss": 0.5})
    loggers.close("FINISHED")
    assert good.calls == [("params", {"train.lr": "0.1"}), ("scalars", 3, {"step/loss": 1.0}),
                          ("scalars", 6, {"step/loss": 0.5}), ("close", "FINISHED")]  # fmt: skip
    assert bad.calls == [("params", {"train.lr": "0.1"})]
    warnings = [r.getMessage() for r in caplog.records if "logger failed" in r.getMessage()]
    assert warnings == ["the bad logger failed (OSError: [Errno 28] No space left on "
                        "device); training goes on without it"]  # fmt: skip

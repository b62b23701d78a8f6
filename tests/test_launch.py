"""``torch-vae train --nproc_per_node N`` (cli.launch): N processes forked from the command
once PyTorch is imported, run as one job by PyTorch's elastic launcher."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from test_distributed import SRC

from runs import TINY, assert_same_run, weights
from torch_vae.cli import launch, main
from torch_vae.data import load_split
from torch_vae.training.rundir import read_metrics
from torch_vae.training.state import load_train_state

# the command, with each process recording its pid and its parent's; optionally rank 1 fails
# at its third step ("fail"), or every process is sent SIGINT at its third step ("stop"), or
# rank 1 is killed by SIGKILL at its 25th computation of the objective ("kill")
SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    from torch_vae import VAE, TorchVaeError
    from torch_vae.cli import main
    from torch_vae.cli import launch

    out, mode = Path(sys.argv[1]), sys.argv[2]
    real_worker, real_objective = launch._worker, VAE.objective
    calls = 0

    def failing(*a, **k):
        global calls
        calls += 1
        if calls == 3 and mode == "stop":
            os.kill(os.getpid(), signal.SIGINT)
        if calls == 3 and mode == "fail" and os.environ["RANK"] == "1":
            raise TorchVaeError("simulated failure of rank 1")
        if calls == 25 and mode == "kill" and os.environ["RANK"] == "1":
            os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
        return real_objective(*a, **k)

    def worker(*args):
        rank = os.environ["RANK"]
        ids = {"pid": os.getpid(), "ppid": os.getppid(), "world": os.environ["WORLD_SIZE"]}
        (out / f"rank{rank}.json").write_text(json.dumps(ids))
        return real_worker(*args)

    launch._worker = worker
    VAE.objective = failing
    print("launcher", os.getpid(), flush=True)
    sys.exit(main(sys.argv[3:]))
    """
)


@pytest.fixture
def data(mnist_dir):
    for split in ("train", "test"):
        load_split("mnist", split, 16, mnist_dir, progress=False)
    return mnist_dir


def _env() -> dict[str, str]:
    """This checkout's torch-vae, outside any torchrun job."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("WORLD_SIZE", None)
    return env


def _command(tmp_path, data, *args, mode="ok", loud=False):
    script = tmp_path / "command.py"
    script.write_text(SCRIPT)
    env = _env()
    flags = [a for a in TINY if not (loud and a == "--quiet")]
    cmd = [sys.executable, str(script), str(tmp_path), mode, "train",
           *flags, "--data_dir", str(data), "--nproc_per_node", "2", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)


def assert_same_trained_weights(run, ref):
    """Bitwise-equal parameters; batch-norm running statistics equal to rounding (a stopped
    job averages them over its processes when it stops, one never stopped at its epochs' ends)."""
    a, b = weights(run), weights(ref)
    assert a.keys() == b.keys()
    for k in a:
        if "running" in k:
            assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k
        else:
            assert torch.equal(a[k], b[k]), k


@pytest.mark.slow  # three forked 2-process jobs: about 14 s
def test_nproc_per_node_trains_and_resumes_bitwise_in_processes_forked_from_the_command(
    data, tmp_path
):
    run = tmp_path / "run"
    done = _command(tmp_path, data, "--run_dir", str(run), "--epochs", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    launcher = int(done.stdout.split()[1])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["ppid"] for r in ranks] == [launcher, launcher]  # forks of the command itself
    assert {r["world"] for r in ranks} == {"2"} and ranks[0]["pid"] != ranks[1]["pid"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    more = _command(tmp_path, data, "--resume", str(run), "--epochs", "3")
    assert more.returncode == 0, more.stderr[-2000:]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    # the same job never interrupted: the same noise on each process at every step
    ref = tmp_path / "ref"
    straight = _command(tmp_path, data, "--run_dir", str(ref), "--epochs", "3")
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert_same_run(run, ref)


@pytest.mark.slow  # three forked 2-process jobs of 36 steps: about 12 s
def test_nproc_per_node_job_stopped_within_an_epoch_resumes_to_the_weights_of_one_never_stopped(
    data, tmp_path
):
    # batch 2: 18 steps an epoch; SIGINT at step 3 is read at step 10 (losses are read every
    # 10 steps), so the job saves its state within epoch 1
    run, ref, flags = tmp_path / "run", tmp_path / "ref", ["--batchsize", "2", "--epochs", "2"]
    stopped = _command(tmp_path, data, "--run_dir", str(run), *flags, mode="stop")
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    state = load_train_state(run)
    assert (state["step"], state["epoch"], state["partial"]["batch"]) == (10, 0, 10)
    more = _command(tmp_path, data, "--resume", str(run), *flags)
    assert more.returncode == 0, more.stderr[-2000:]
    straight = _command(tmp_path, data, "--run_dir", str(ref), *flags)
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert_same_trained_weights(run, ref)


@pytest.mark.slow  # one forked 2-process job: about 5 s
def test_nproc_per_node_job_says_a_failed_process_error_once(data, tmp_path):
    run = tmp_path / "run"
    done = _command(tmp_path, data, "--run_dir", str(run), "--epochs", "50", mode="fail",
                    loud=True)  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    # said once; rank 0's echo of it ("another process of the job stopped") left out; then
    # what rank 0 saved of the two steps done
    why, saved = done.stderr.strip().splitlines()[-2:]
    assert why == "torch-vae: error: simulated failure of rank 1"
    assert saved.startswith("torch-vae: the job lost a process at step 2 (epoch 1); the "
                            "training state is saved, continue with: torch-vae train "
                            f"--resume {run}")  # fmt: skip
    assert done.stderr.count("simulated failure") == 1
    assert "another process of the job" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow  # three forked 2-process jobs of 36 steps: about 15 s
def test_a_job_whose_process_is_killed_keeps_the_steps_the_others_did_and_resumes(data, tmp_path):
    # batch 2: 18 steps an epoch; rank 1 is killed during step 25 (its 25th objective, or
    # sooner counting the epoch's evaluation): the epoch-1 checkpoint is at step 18, and
    # rank 0 saves the steps of epoch 2 it finished with rank 1
    run, flags = tmp_path / "run", ["--batchsize", "2", "--epochs", "2"]
    killed = _command(tmp_path, data, "--run_dir", str(run), *flags, mode="kill", loud=True)
    assert killed.returncode == 1, killed.stderr[-2000:]
    state = load_train_state(run)
    assert state["epoch"] == 1 and state["partial"] is not None, killed.stderr[-2000:]
    assert 18 < state["step"] < 25 and state["partial"]["batch"] == state["step"] - 18
    why, saved = killed.stderr.strip().splitlines()[-2:]
    # "was killed by SIGKILL" where the launcher saw process 1 end first, else "ended without
    # a word (killed, e.g. out of memory?)"
    assert why.startswith("torch-vae: error: process 1 of the job ") and "killed" in why, why
    hint = f"continue with: torch-vae train --resume {run} --data_dir {data} --nproc_per_node 2"
    assert saved.startswith(f"torch-vae: the job lost a process at step {state['step']} (epoch "
                            f"2); the training state is saved, {hint}")  # fmt: skip
    assert "Traceback" not in killed.stderr
    more = _command(tmp_path, data, "--resume", str(run), *flags)
    assert more.returncode == 0, more.stderr[-2000:]
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]
    assert load_train_state(run)["step"] == 36
    # the step in progress when rank 1 died is trained again: its batch counted once in the
    # batch norms, as in a job never stopped
    ref = tmp_path / "ref"
    straight = _command(tmp_path, data, "--run_dir", str(ref), *flags)
    assert straight.returncode == 0, straight.stderr[-2000:]
    counts = [{k: int(v) for k, v in weights(r).items() if k.endswith("num_batches_tracked")}
              for r in (run, ref)]  # fmt: skip
    assert counts[0] == counts[1] and counts[0]


@pytest.mark.slow  # one forked 2-process job, stopped after 2 s: about 5 s
def test_nproc_per_node_job_stopped_by_ctrl_c_saves_its_state_and_says_how_to_resume(
    data, tmp_path
):
    run = tmp_path / "run"
    env = _env()
    cmd = [sys.executable, "-m", "torch_vae", "train", *TINY, "--data_dir", str(data),
           "--run_dir", str(run), "--epochs", "1000", "--nproc_per_node", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not (run / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # the first epoch is done: the processes are training
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole process group
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]  # said once for the job, with how to go on
    assert last.startswith("torch-vae: stopped by SIGINT at step "), err
    hint = f"continue with: torch-vae train --resume {run} --data_dir {data} --nproc_per_node 2"
    assert hint in last and "torchrun" not in last
    assert err.count("stopped by SIGINT") == 1 and "Traceback" not in err
    assert "signal again" not in err  # the launcher's echo of the Ctrl-C is not a second one
    assert (run / "ckpt.pt").is_file()


@pytest.mark.slow  # two forked 2-process jobs: about 10 s
def test_a_job_s_last_batch_with_fewer_images_than_processes_is_left_out(data, tmp_path):
    """36 training images in batches of 7 leave 1 image for the last step, which one of 2
    processes would get none of: the epoch has 5 steps, not 6 (a run of one process has 6);
    a batch smaller than the job is refused before any work."""
    run = tmp_path / "run"
    flags = [a for a in TINY if a != "--batchsize"]
    flags.remove("8")
    cmd = [sys.executable, "-m", "torch_vae", "train", *flags, "--data_dir", str(data),
           "--epochs", "2", "--nproc_per_node", "2"]  # fmt: skip
    done = subprocess.run([*cmd, "--run_dir", str(run), "--batchsize", "7"], env=_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["step"] for r in read_metrics(run)] == [5, 10]
    small = subprocess.run([*cmd, "--run_dir", str(tmp_path / "small"), "--batchsize", "1"],
                           env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert small.returncode == 1 and "Traceback" not in small.stderr
    assert small.stderr.strip().splitlines()[-1] == (
        "torch-vae: error: --batchsize 1 is the job's batch, split among its 2 processes: each "
        "needs at least one image; pass --batchsize 2 or more"
    )
    assert not (tmp_path / "small").exists()


def test_nproc_per_node_is_refused_inside_a_torchrun_job(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc = main(["train", *TINY, "--run_dir", str(tmp_path / "run"), "--nproc_per_node", "2"])
    assert rc == 1
    assert "already part of a job (WORLD_SIZE is set" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("n, message", [(0, "--nproc_per_node must be"), (10**6, "far more")])
def test_nproc_per_node_out_of_range_is_refused_with_one_line(n, message, capsys, tmp_path):
    rc = main(["train", *TINY, "--run_dir", str(tmp_path / "run"), "--nproc_per_node", str(n)])
    err = capsys.readouterr().err
    assert rc != 0 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_worker_threads_share_the_cpus_unless_threads_are_given(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert launch.worker_threads(2, 0) == 4
    assert launch.worker_threads(3, 0) == 2
    assert launch.worker_threads(16, 0) == 1
    assert launch.worker_threads(2, 3) == 3


def test_threads_warning_counts_every_process_of_the_job(monkeypatch, caplog):
    from torch_vae.cli.main import _set_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr("torch.set_num_threads", lambda n: None)
    _set_threads({"threads": 1}, 2)  # 2 processes of 1 thread on 2 CPUs: fine
    assert not caplog.records
    _set_threads({"threads": 2}, 2)
    (record,) = caplog.records
    assert "--threads 2 in each of 2 processes is more than this machine's 2 CPUs" in (
        record.getMessage()
    )
    assert "pass at most 1" in record.getMessage()


def test_a_job_stopped_by_ctrl_c_before_its_processes_said_anything_is_told_as_such(
    tmp_path, capsys
):
    # the launcher's SignalException path: no process wrote a line, none failed on its own
    assert launch._report(tmp_path, 2, 130) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "torch-vae: the job was stopped by SIGINT before its processes had anything to save"
    ]
    # a process that ended without a word while the others ran: said as such
    assert launch._report(tmp_path, 2, 137, {1: 137}) == 137
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("process 0, 1 of the job ended without a word (killed, e.g. out of memory?)")
    )
    # process 1 killed (SIGKILL): process 0's echo, which points at a message of process 1's
    # that does not exist, is left out
    echo = ("torch-vae: error: process 0 of 2: another process of the job stopped or hung "
            "(Connection reset by peer); its own message above says why")  # fmt: skip
    (tmp_path / "rank00000.txt").write_text(echo + "\n", encoding="utf-8")
    assert launch._report(tmp_path, 2, -9, {1: -9}) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "torch-vae: error: process 1 of the job was killed by SIGKILL; the others were stopped"
    ]


@pytest.mark.parametrize("main_rank", [True, False])
def test_a_save_without_the_other_processes_counts_the_losses_a_resume_carried(main_rank):
    """A resumed epoch's saved sums are the whole job's (20 images); since then this process
    saw 4 of the job's 8 images (losses summing to 8): the job's sums are the carried ones and
    twice its own. Rank 0's own sums began from the carried ones, the others' from 0."""
    from types import SimpleNamespace

    from torch_vae.training.loop import _job_progress
    from torch_vae.training.state import EpochProgress

    loop = SimpleNamespace(carried=({"loss": 100.0}, 20), dist=SimpleNamespace(is_main=main_rank),
                           cfg=SimpleNamespace(batchsize=2), n_train=36)  # fmt: skip
    start = (100.0, 20) if main_rank else (0.0, 0)
    ep = EpochProgress(torch.arange(36), 14, start[1] + 4, 1.0, {"loss": start[0] + 8.0})
    job = _job_progress(loop, ep)
    assert (job.seen, job.batch, job.totals) == (28, 14, {"loss": 100.0 + 16.0})
    loop.carried = None  # an epoch begun after the resume: its own sums, scaled to the job's
    ep = EpochProgress(torch.arange(36), 14, 14, 1.0, {"loss": 28.0})
    assert _job_progress(loop, ep).totals == {"loss": 56.0}

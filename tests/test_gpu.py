"""On a CUDA GPU: training in each precision, an fp16 run resumed bitwise, the inference
commands against the CPU, the README's example, --compile, and torchrun with NCCL. Marked
``gpu``: skipped where torch.cuda.is_available() is False (``pytest -m gpu`` runs only these).
tests/test_devices.py tests the logic behind them on the CPU."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import torch_vae
from torch_vae.cli import main
from torch_vae.runtime.device import cuda_bf16_native
from torch_vae.training.compile import has_triton
from torch_vae.training.state import load_train_state

pytestmark = pytest.mark.gpu

SRC = str(Path(torch_vae.__file__).parents[1])
README = Path(__file__).parents[1] / "README.md"
TINY = [
    "--dataset", "mnist", "--batchsize", "8", "--latent_dims", "3", "--max_filters", "8",
    "--image_size", "16", "--depth", "2", "--device", "cuda", "--quiet",
]  # fmt: skip


def train(run, data, *extra):
    return main(["train", *TINY, "--data_dir", str(data), "--run_dir", str(run), *extra])


def _env(**extra):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return {**env, **extra}


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_train_two_steps_in_each_precision(data, tmp_path, precision):
    if precision == "bf16" and not cuda_bf16_native(torch.device("cuda")):
        pytest.skip("this GPU has no native bfloat16")
    run = tmp_path / "run"
    assert train(run, data, "--epochs", "1", "--max_steps", "2", "--precision", precision) == 0
    state = load_train_state(run)
    assert state["step"] == 2
    record = json.loads((run / "metrics.jsonl").read_text())
    assert np.isfinite(record["train_loss"]) and np.isfinite(record["val_loss"])
    if precision == "fp16":  # the loss scaler's state is saved for an exact resume
        assert state["scaler"]["scale"] > 0
    else:
        assert state["scaler"] is None
    assert state["rng"]["cuda"]  # the GPU's generator, for the training noise


RESUME = textwrap.dedent(
    """
    import sys, torch
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    from torch_vae.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_fp16_run_resumes_bitwise(data, tmp_path):
    """Stopped by --max_steps 3 and resumed to 6 (the scaler's scale and growth counter
    restored): the same weights as a run of 6 steps. Each run in its own process, with
    PyTorch's deterministic algorithms (cuBLAS needs CUBLAS_WORKSPACE_CONFIG for those)."""
    env = _env(CUBLAS_WORKSPACE_CONFIG=":4096:8")

    def run(*args):
        done = subprocess.run([sys.executable, "-c", RESUME, *args], env=env, timeout=300,
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]

    ref, cut = tmp_path / "ref", tmp_path / "cut"
    common = [*TINY, "--data_dir", str(data), "--precision", "fp16", "--epochs", "2"]
    run("train", *common, "--run_dir", str(ref), "--max_steps", "6")
    run("train", *common, "--run_dir", str(cut), "--max_steps", "3")
    run("train", "--resume", str(cut), "--data_dir", str(data), "--device", "cuda", "--quiet",
        "--max_steps", "6")  # fmt: skip
    a, b = torch_vae.load_model(cut).state_dict(), torch_vae.load_model(ref).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert load_train_state(cut)["scaler"] == load_train_state(ref)["scaler"]


def _pixels(folder, n):
    return np.stack([np.asarray(Image.open(folder / f"sample_{i:05d}.png"), np.int16)
                     for i in range(n)])  # fmt: skip


def test_generate_reconstruct_and_evaluate_match_the_cpu(trained, mnist_dir, tmp_path):
    """The same seed draws the same latents and noise on the GPU as on the CPU; pixels and
    numbers differ only by the kernels' rounding (TF32 convolutions)."""
    out = {}
    for device in ("cpu", "cuda"):
        where = ["--device", device, "--quiet"]
        data = ["--data_dir", str(mnist_dir)]
        gen = tmp_path / f"gen-{device}"
        assert main(["generate", "--model", str(trained), "--nsamples", "16",
                     "--outdir", str(gen), *where]) == 0  # fmt: skip
        rec = tmp_path / f"rec-{device}"
        assert main(["reconstruct", "--model", str(trained), "--rec_testdata", "--nimages",
                     "8", "--outdir", str(rec), *data, *where]) == 0  # fmt: skip
        report = tmp_path / f"eval-{device}.json"
        assert main(["evaluate", "--model", str(trained), "--nimages", "16", "--iw_samples",
                     "8", "--report", str(report), *data, *where]) == 0  # fmt: skip
        out[device] = (_pixels(gen, 16), json.loads(report.read_text()))
    (cpu_px, cpu), (gpu_px, gpu) = out["cpu"], out["cuda"]
    assert np.abs(cpu_px - gpu_px).max() <= 3
    for key in ("objective", "kl", "mse", "nll", "decoder_sigma"):
        assert abs(cpu[key] - gpu[key]) <= 2e-3 * abs(cpu[key]) + 1e-4, key


def test_readme_python_example_on_cuda(tmp_path, monkeypatch):
    """As written, with the model and images on the GPU: its CPU generators used to crash."""
    block = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    moved = block.replace('load_model("runs/quickstart")', 'load_model("runs/quickstart", "cuda")')
    moved = moved.replace("torch.rand(4, 1, 64, 64)", 'torch.rand(4, 1, 64, 64, device="cuda")')
    assert moved.count("cuda") == 2
    monkeypatch.chdir(tmp_path)
    torch_vae.VAE(torch_vae.ModelConfig(arch="dcgan", depth=4)).save_pretrained("runs/quickstart")
    scope: dict = {}
    exec(compile(moved, str(README), "exec"), scope)
    assert scope["samples"].device.type == "cuda" and scope["samples"].shape == (16, 1, 64, 64)
    on_cpu = torch_vae.load_model("runs/quickstart")
    same = on_cpu.sample(16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(scope["samples"].cpu(), same, atol=1e-2)


def test_compile_on_cuda(data, tmp_path, capsys):
    run = tmp_path / "run"
    rc = train(run, data, "--epochs", "1", "--max_steps", "2", "--compile")
    if has_triton():
        assert rc == 0 and load_train_state(run)["step"] == 2
    else:
        assert rc == 1 and "--compile on CUDA needs Triton" in capsys.readouterr().err


NCCL = textwrap.dedent(
    """
    import torch, torch.distributed as dist
    from torch_vae.training import distributed
    from torch_vae.training.distributed import Distributed
    # one process cannot form a job of two; the NCCL paths are exercised on a group of one
    # with the helpers told there are two processes
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", timeout=distributed.collective_timeout(), device_id=device)
    d = Distributed(rank=0, world=2)
    d.barrier()
    assert d.max([1.0, -3.0]) == [1.0, -3.0] and d.sum([2.0]) == [2.0] and d.any(True)
    assert d.first_then_others(lambda: "data") == "data"
    dist.destroy_process_group()
    print("nccl ok")
    """
)


def test_torchrun_with_nccl(data, tmp_path):
    """torchrun on every GPU there is (one is enough): trains, resumes; and the NCCL helpers
    (barrier on the process's GPU, all-reduces on the device, the store-based wait)."""
    n = min(torch.cuda.device_count(), 2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    run = tmp_path / "run"
    args = ["train", *TINY, "--data_dir", str(data), "--run_dir", str(run), "--epochs", "1"]
    done = subprocess.run([*cmd, str(n), "-m", "torch_vae", *args], env=_env(), timeout=300,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    more = ["train", "--resume", str(run), "--data_dir", str(data), "--device", "cuda",
            "--quiet", "--epochs", "2"]  # fmt: skip
    done = subprocess.run([*cmd, str(n), "-m", "torch_vae", *more], env=_env(), timeout=300,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    script = tmp_path / "nccl.py"
    script.write_text(NCCL)
    done = subprocess.run([*cmd, "1", str(script)], env=_env(), timeout=300,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and "nccl ok" in done.stdout, done.stderr[-2000:]

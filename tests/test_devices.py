"""CUDA and Apple-silicon (MPS) paths, tested on the CPU wherever their logic runs there: random
numbers drawn where the generator lives, autocast where PyTorch has it, pinned staging of
batches, the fp16 loss scaler in the training state, erfc on the CPU, host syncs per step.
tests/test_gpu.py runs the rest on a real GPU."""

import contextlib
import re
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from torch_vae import VAE, ModelConfig, TorchVaeError, TrainConfig
from torch_vae.evaluation import likelihood as evaluate_mod
from torch_vae.models.losses import vae_loss
from torch_vae.runtime.device import (
    autocast_off,
    autocast_works,
    can_copy_async,
    cuda_bf16_native,
    has_autocast,
    randn,
    torch_version,
)
from torch_vae.runtime.precision import DTYPES, Precision
from torch_vae.training import compile as speed
from torch_vae.training import loop as train_mod
from torch_vae.training.batches import PinnedBatches, batch_source
from torch_vae.training.compile import check_compile
from torch_vae.training.distributed import Distributed
from torch_vae.training.plan import RunPlan
from torch_vae.training.state import (
    EpochProgress,
    load_train_state,
    restore_train_state,
    save_train_state,
)

TINY = ModelConfig(image_size=16, latent_dims=3, max_filters=8, depth=2)
README = Path(__file__).parents[1] / "README.md"


# 1. Random numbers drawn where the generator lives ------------------------------------------


def test_randn_draws_on_the_generators_device_and_moves_the_numbers():
    g = torch.Generator().manual_seed(3)
    z = randn((4, 5), g, "meta")
    assert z.device.type == "meta" and z.shape == (4, 5)
    # the CPU generator drew them (a draw on 'meta' would have left it untouched)
    cpu = torch.Generator().manual_seed(3)
    torch.randn(4, 5, generator=cpu)
    assert torch.equal(randn((2,), g), torch.randn(2, generator=cpu))
    # on the CPU: exactly the numbers of torch.randn with that generator
    ref = torch.randn(4, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(randn((4, 5), torch.Generator().manual_seed(3), "cpu"), ref)
    # 16 bits: drawn in float32 and rounded, the same on every device
    h = randn((3,), torch.Generator().manual_seed(0), "meta", torch.float16)
    assert h.dtype == torch.float16 and h.device.type == "meta"
    h = randn((3,), torch.Generator().manual_seed(0), "cpu", torch.float16)
    assert torch.equal(h, torch.randn(3, generator=torch.Generator().manual_seed(0)).half())
    # without a generator: the device's own, as torch.randn
    torch.manual_seed(1)
    a = randn((3,), None, "cpu")
    torch.manual_seed(1)
    assert torch.equal(a, torch.randn(3))


def test_a_model_on_another_device_samples_with_a_cpu_generator():
    """The model on 'meta', which PyTorch treats like an accelerator here: a CPU generator for
    its posterior and prior samples, and --native_size's float32 projection, whose disabled
    autocast raised on a device type without autocast (MPS before PyTorch 2.5)."""
    config = ModelConfig(image_size=16, latent_dims=3, max_filters=8, depth=2, native_size=8)
    model = VAE(config).to("meta").eval()
    x = torch.rand(2, 1, 16, 16, device="meta")
    z = model.encode(x).sample(torch.Generator().manual_seed(0))
    assert z.device.type == "meta" and model.decode(z).shape == (2, 1, 16, 16)
    out = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert out.device.type == "meta" and out.shape == (5, 1, 16, 16)


def test_readme_python_example_with_the_model_on_another_device(tmp_path, monkeypatch):
    """The README's example, with the model and images on 'meta' and its generators as written
    (on the CPU): the path that crashed on CUDA and MPS. tests/test_gpu.py runs it on CUDA."""
    block = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    moved = block.replace('load_model("runs/quickstart")', 'load_model("runs/quickstart", "meta")')
    moved = moved.replace("torch.rand(4, 1, 64, 64)", 'torch.rand(4, 1, 64, 64, device="meta")')
    assert moved.count("meta") == 2 and "torch.Generator()" in moved
    monkeypatch.chdir(tmp_path)
    VAE(ModelConfig(arch="dcgan", depth=4)).save_pretrained("runs/quickstart")
    monkeypatch.setattr("builtins.print", lambda *a, **k: None)
    scope: dict = {}
    exec(compile(moved, str(README), "exec"), scope)
    assert scope["z"].device.type == "meta" and scope["samples"].shape == (16, 1, 64, 64)
    assert scope["samples"].device.type == "meta"


# 2. Autocast where PyTorch has it -----------------------------------------------------------


def test_autocast_off_is_nothing_where_pytorch_has_no_autocast():
    assert not has_autocast("meta") and has_autocast("cpu")
    with autocast_off("meta"):
        pass
    with torch.autocast("cpu", dtype=torch.bfloat16), autocast_off("cpu"):
        assert torch.nn.Linear(2, 2)(torch.rand(1, 2)).dtype == torch.float32


def test_autocast_off_compiles_without_dynamos_cache_warning(monkeypatch):
    from torch._dynamo import utils as dynamo_utils

    monkeypatch.setattr(dynamo_utils, "warn_once_cache", set())  # as in a fresh process
    linear = torch.nn.Linear(2, 2)

    def fp32_inside(x):
        with autocast_off("cpu"):
            return linear(x)

    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = torch.compile(fp32_inside, backend="eager")(torch.rand(1, 2))
    assert out.dtype == torch.float32
    assert not [w for w in caught if "lru_cache" in str(w.message)]


@pytest.mark.parametrize(
    "version,precision,ok",
    [("2.4.1", "fp16", False), ("2.5.1", "fp16", True), ("2.5.1", "bf16", False),
     ("2.6.0", "bf16", True), ("2.13.0", "bf16", True)],
)  # fmt: skip
def test_mps_autocast_needs_the_pytorch_that_brought_it(version, precision, ok):
    assert autocast_works("mps", DTYPES[precision], version) is ok
    assert torch_version(version) == tuple(int(p) for p in version.split(".")[:2])


@pytest.mark.parametrize(
    "version,precision,message",
    [("2.4.1", "fp16", "fp16 on mps needs PyTorch >= 2.5 .this is PyTorch 2.4.1.; use --pre"
      "cision fp32"),
     ("2.5.1", "bf16", "bf16 on mps needs PyTorch >= 2.6 and macOS >= 14 .this is PyTorch "
      "2.5.1.; use --precision fp16 or fp32")],
)  # fmt: skip
def test_precision_on_mps_is_refused_where_autocast_would_ignore_it(
    monkeypatch, version, precision, message
):
    monkeypatch.setattr(torch, "__version__", version)
    with pytest.raises(TorchVaeError, match=message):
        Precision(torch.device("mps"), precision)


def test_an_autocast_that_turns_itself_off_is_refused(monkeypatch):
    """PyTorch turns an unsupported dtype off with a warning (CPU fp16 before 2.2, MPS bf16 in
    2.5): --precision must not be silently ignored."""

    def warns(device_type, dtype=None, enabled=True):
        warnings.warn(
            "In CPU autocast, the dtype is not supported. Disabling autocast.", stacklevel=2
        )
        return contextlib.nullcontext()

    monkeypatch.setattr(torch, "autocast", warns)
    assert not autocast_works("cpu", torch.float16)
    with pytest.raises(TorchVaeError, match="--precision fp16 on cpu is not supported; use --p"):
        Precision(torch.device("cpu"), "fp16")


def test_bf16_is_checked_on_the_chosen_gpu_without_emulation(monkeypatch):
    current = []

    @contextlib.contextmanager
    def on(device):
        current.append(torch.device(device))
        yield

    def supported(including_emulation=True):  # emulated bf16 on every GPU; native on cuda:1
        return including_emulation or current[-1] == torch.device("cuda", 1)

    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "device", on)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert cuda_bf16_native(torch.device("cuda", 1))
    assert not cuda_bf16_native(torch.device("cuda", 0))
    with pytest.raises(TorchVaeError, match="bfloat16 support .Ampere or newer., which cuda:0 is"):
        Precision(torch.device("cuda", 0), "bf16")
    # PyTorch < 2.4: no including_emulation; the chosen GPU's compute capability decides
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    major = {0: 7, 1: 8}
    props = lambda d: types.SimpleNamespace(major=major[torch.device(d).index])  # noqa: E731
    monkeypatch.setattr(torch.cuda, "get_device_properties", props)
    assert cuda_bf16_native(torch.device("cuda", 1))
    assert not cuda_bf16_native(torch.device("cuda", 0))


def test_compile_on_cuda_without_triton_is_one_line(monkeypatch):
    assert isinstance(speed.has_triton(), bool)
    monkeypatch.setattr(speed, "has_triton", lambda: False)
    with pytest.raises(TorchVaeError, match="--compile on CUDA needs Triton"):
        check_compile(torch.device("cuda"))


# 3. Batches: asynchronous copies from pinned staging buffers only ---------------------------


def test_copies_are_asynchronous_only_from_pinned_memory_to_cuda():
    batch = torch.zeros(2, 4, 4, 1, dtype=torch.uint8)  # pageable
    assert not can_copy_async(batch, torch.device("cuda"))
    assert not can_copy_async(batch, torch.device("mps"))
    assert not can_copy_async(batch, torch.device("cpu"))


class _Event:
    def __init__(self, log):
        self.log, self.done = log, False

    def synchronize(self):
        self.done = True
        self.log.append("wait")


class _Recorded(PinnedBatches):
    """The staging logic without CUDA: a copy is a clone, an event a recorder."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.log, self.events = [], []

    def copy(self, buf):
        self.log.append(("copy", buf.data_ptr()))
        return buf.clone()

    def record(self):
        self.events.append(_Event(self.log))
        return self.events[-1]


def test_pinned_batches_reuse_two_buffers_and_wait_before_refilling():
    images = torch.randint(0, 256, (37, 4, 4, 3), dtype=torch.uint8)
    staged = _Recorded(images, torch.device("cpu"), batch=8, pin=False)
    ptrs = [b.data_ptr() for b in staged.buffers]
    perm = torch.randperm(37)
    out = [staged(perm[i : i + 8]) for i in range(0, 37, 8)]
    for i, batch in zip(range(0, 37, 8), out, strict=True):
        assert torch.equal(batch, images[perm[i : i + 8]])  # the short last one too
    copies = [entry[1] for entry in staged.log if entry != "wait"]
    assert copies == [ptrs[0], ptrs[1]] * 2 + [ptrs[0]]  # two buffers, in turn
    assert staged.log.count("wait") == 3  # before each refill, after its last copy
    assert (
        staged.log.index("wait") == 2
        and [e.done for e in staged.events] == [True] * 3 + [False] * 2
    )
    # the whole set is not pinned, and off CUDA batches are plainly indexed
    assert torch.equal(batch_source(images, torch.device("cpu"), 8)(perm[:5]), images[perm[:5]])


# 4. The fp16 loss scaler: training only, and saved in the training state ---------------------


def _scaled_steps(model, opt, scaler, n=3):
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    for _ in range(n):
        opt.zero_grad()
        scaler.scale(vae_loss(model(x), x)["loss"]).backward()
        scaler.step(opt)
        scaler.update()


def test_grad_scaler_state_round_trips_through_the_training_state(tmp_path):
    torch.manual_seed(0)
    model = VAE(TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    _scaled_steps(model, opt, scaler)
    saved = scaler.state_dict()
    assert saved["scale"] == 2.0**11 and saved["_growth_tracker"] == 1  # not the defaults
    save_train_state(tmp_path, model=model, opt=opt, gen=torch.Generator(),
                     device=torch.device("cpu"), epoch=1, step=3, n_train=10,
                     scaler=scaler)  # fmt: skip
    state = load_train_state(tmp_path)
    assert state["scaler"] == saved
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    opt2 = torch.optim.AdamW((m := VAE(TINY)).parameters(), lr=1e-3)
    restore_train_state(state, tmp_path / "ckpt.pt", m, opt2, torch.Generator(), 10, 5,
                        scaler=fresh)  # fmt: skip
    assert fresh.state_dict() == saved
    # the next steps (with the same noise) scale exactly as the uninterrupted scaler's
    for pair in ((model, opt, scaler), (m, opt2, fresh)):
        torch.manual_seed(5)
        _scaled_steps(*pair, 2)
    assert fresh.state_dict() == scaler.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), m.parameters(), strict=True))


def test_training_states_without_a_scaler_still_load_and_damaged_ones_are_refused(tmp_path):
    model = VAE(TINY)
    opt = torch.optim.AdamW(model.parameters())
    save_train_state(tmp_path, model=model, opt=opt, gen=torch.Generator(),
                     device=torch.device("cpu"), epoch=1, step=3, n_train=10)  # fmt: skip
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert state["scaler"] is None
    del state["scaler"], state["digest"]  # as written by earlier versions (neither)
    torch.save(state, tmp_path / "ckpt.pt")
    fresh = torch.amp.GradScaler("cpu", init_scale=4.0)
    restore_train_state(load_train_state(tmp_path), tmp_path / "ckpt.pt", VAE(TINY),
                        torch.optim.AdamW(VAE(TINY).parameters()), torch.Generator(), 10, 5,
                        scaler=fresh)  # fmt: skip
    assert fresh.get_scale() == 4.0  # a fresh start
    state["scaler"] = {"scale": float("nan")}
    torch.save(state, tmp_path / "ckpt.pt")
    with pytest.raises(TorchVaeError, match="fp16 loss scaler's state is damaged"):
        load_train_state(tmp_path)


def test_only_fp16_training_on_cuda_scales_the_loss():
    assert Precision(torch.device("cpu"), "fp16", train=True).scaler is None
    assert Precision(torch.device("cuda"), "fp16").scaler is None  # inference: no scaler


# 5. erfc on the CPU where the device has none -----------------------------------------------


def test_erfc_fallback_gives_the_same_numbers(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 1, 8, 8), generator=g).float() / 255
    mean = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    direct = evaluate_mod.discretized_gaussian_log_prob(x, mean, 0.02)
    calls = []
    monkeypatch.setattr(evaluate_mod, "_has_erfc", lambda device_type: calls.append(1) or False)
    moved = evaluate_mod.discretized_gaussian_log_prob(x, mean, 0.02)
    assert calls and torch.equal(moved, direct)
    t = torch.linspace(-5, 30, 101)
    assert torch.equal(evaluate_mod.erfc(t), torch.special.erfc(t))


# 7. Host syncs: the losses are read every LOG_EVERY steps ------------------------------------


class _Job(Distributed):
    """Rank 0 of 2 as the training loop sees it, every collective counted and answered alone."""

    calls: list = []
    averaged: list = []

    def shard(self, idx):
        return idx

    def any(self, flag):
        self.calls.append("any")
        return flag

    def max(self, values):
        self.calls.append("max")
        return values

    def average_gradients(self, model):  # the gradients' all-reduce on the CPU, every step
        self.averaged.append(all(p.grad is not None for p in model.parameters()))


def _count_syncs(monkeypatch) -> list[str]:
    """Calls from torch-vae's own code that make the host wait for the device."""
    counted = []
    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__"):
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _real=real, _name=name, **k):
            caller = __import__("sys")._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("torch_vae"):
                counted.append(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    return counted


def test_one_host_sync_per_logging_interval(tmp_path, monkeypatch):
    """25 steps: the losses are read 3 times (after steps 10, 20 and 25), and under torchrun
    the stop signal and the non-finite check share one all-reduce then; nothing else waits."""
    images = torch.randint(0, 256, (100, 16, 16, 1), dtype=torch.uint8)
    plan = RunPlan(tmp_path / "run", TINY, TrainConfig(dataset="mnist", epochs=1, batchsize=4))
    loop = train_mod._start(plan, images, images[:8], torch.device("cpu"), False,
                            Distributed(), None)  # fmt: skip
    loop.stop = train_mod.StopOnSignal()
    loop.dist = _Job(rank=0, world=2)
    _Job.calls, _Job.averaged = [], []
    ep = EpochProgress(torch.randperm(100, generator=loop.gen))
    syncs = _count_syncs(monkeypatch)
    train_mod.train_one_epoch(loop, 1, ep)
    monkeypatch.undo()
    assert loop.step == 25 and ep.batch == 25 and ep.seen == 100
    assert _Job.calls == ["max"] * 3, _Job.calls
    assert _Job.averaged == [True] * 25  # each step's gradients, before its optimizer step
    assert syncs == ["tolist"] * 3, syncs
    assert np.isfinite(ep.totals["loss"]) and ep.totals["loss"] > 0


@pytest.mark.parametrize(("name", "says"), [
    ("foo", "unknown --device 'foo'; choose one of auto, cpu, cuda, mps or cuda:N"),
    ("meta", "--device 'meta' is not one torch-vae runs on; choose one of auto, cpu, cuda, mps or "
             "cuda:N"),
])  # fmt: skip
def test_an_unknown_device_lists_the_devices_to_choose_from(name, says):
    from torch_vae.runtime.device import pick_device

    with pytest.raises(TorchVaeError) as refused:
        pick_device(name)
    assert str(refused.value) == says


def test_cpu_with_another_device_is_refused_and_with_cpu_or_auto_is_the_cpu(capsys, tmp_path):
    from torch_vae.runtime.device import pick_device

    for name in ("cuda", "mps", "cuda:1"):
        with pytest.raises(TorchVaeError, match=f"^--cpu and --device {name} ask for two devices"):
            pick_device(name, cpu=True)
    assert pick_device("auto", cpu=True).type == "cpu" == pick_device("cpu", cpu=True).type
    from torch_vae.cli import main

    args = [
        "generate",
        "--model",
        str(tmp_path),
        "--outdir",
        str(tmp_path / "g"),
        "--cpu",
        "--device",
        "cuda",
    ]
    assert main(args) == 1
    assert capsys.readouterr().err.strip().endswith("ask for two devices; pass one of them")


def test_fp16_training_on_the_cpu_is_warned_of_and_inference_is_not(caplog):
    from torch_vae.runtime.precision import Precision

    with caplog.at_level("WARNING", logger="torch_vae"):
        Precision(torch.device("cpu"), "fp16")  # generate, reconstruct: no warning
        assert "fp16" not in caplog.text
        Precision(torch.device("cpu"), "fp16", train=True)
    assert "--precision fp16 on the CPU trains far slower than fp32" in caplog.text


@pytest.mark.parametrize("machine, native, warned", [
    ("x86_64", True, 0),
    ("x86_64", False, 1),
    ("aarch64", False, 0),  # flags not read there: bf16 is not said to be emulated
])  # fmt: skip
def test_bf16_training_on_an_x86_cpu_without_native_bf16_is_warned_of(
    machine, native, warned, monkeypatch, caplog
):
    from torch_vae.runtime import precision

    monkeypatch.setattr(precision, "bf16_native", lambda device: native)
    monkeypatch.setattr(precision.platform, "machine", lambda: machine)
    with caplog.at_level("WARNING", logger="torch_vae"):
        precision.Precision(torch.device("cpu"), "bf16")  # generate, reconstruct: no warning
        assert "emulates" not in caplog.text
        precision.Precision(torch.device("cpu"), "bf16", train=True)
        precision.Precision(torch.device("cpu"), "auto", train=True)  # fp32 there: no warning
    assert caplog.text.count("PyTorch emulates bf16") == warned


def test_more_threads_than_cpus_are_warned_of(tmp_path, monkeypatch, caplog):
    import os

    from torch_vae.cli import main

    asked = []
    monkeypatch.setattr(torch, "set_num_threads", asked.append)  # this process keeps its own
    many = (os.cpu_count() or 1) + 1
    with caplog.at_level("WARNING", logger="torch_vae"):
        main(["generate", "--model", str(tmp_path / "none"), "--outdir", str(tmp_path / "o"),
              "--threads", str(many)])  # fmt: skip
    assert asked == [many]
    assert f"--threads {many} is more than this machine's {many - 1} CPUs" in caplog.text

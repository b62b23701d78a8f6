import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from torch_vae import VAE, ModelConfig, TorchVaeError, TrainConfig, load_model, save_model
from torch_vae.cli import main
from torch_vae.io.png import encode_png, save_png
from torch_vae.runtime.precision import Precision
from torch_vae.training.compile import maybe_compile, unwrap


@pytest.mark.parametrize("channels", [1, 3])
def test_png_encoder_round_trip(tmp_path, channels):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (17, 23, channels), dtype=np.uint8)
    for image in (img, img[:, ::-1]):  # contiguous and not
        decoded = np.asarray(Image.open(io.BytesIO(encode_png(image))))
        assert np.array_equal(decoded.reshape(image.shape), image)
    save_png(img, tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as f:
        assert f.mode == ("L" if channels == 1 else "RGB") and f.size == (23, 17)


def test_png_encoder_rejects_other_arrays():
    with pytest.raises(ValueError, match=r"expected uint8 \(H, W, 1 or 3\) image, got uint8"):
        encode_png(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match=r"expected uint8 \(H, W, 1 or 3\) image, got float32"):
        encode_png(np.zeros((4, 4, 1), np.float32))


def _trained_like_model(arch="original"):
    torch.manual_seed(0)
    config = ModelConfig(
        arch=arch, in_channels=3, image_size=16, latent_dims=4, max_filters=16, depth=2
    )
    model = VAE(config)
    model.train()
    x = torch.rand(8, 3, 16, 16)
    with torch.no_grad():
        for _ in range(3):  # give the batch norms non-trivial running statistics
            model(x * 2 + 0.3)
    for norm in (*model.encoder.norms, *model.decoder.norms):
        if not isinstance(norm, torch.nn.BatchNorm2d):
            continue  # the DCGAN encoder's first convolution has none
        torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
        torch.nn.init.uniform_(norm.bias, -0.2, 0.2)
    return model.eval(), x


@pytest.mark.parametrize("arch", ["original", "dcgan"])
def test_inference_copy_folds_batch_norm_without_changing_outputs(arch):
    model, x = _trained_like_model(arch)
    assert model.config.arch == arch
    # both architectures have batch norms after Conv2d (encoder) and ConvTranspose2d (decoder)
    for part in (model.encoder, model.decoder):
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in part.norms)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = model.inference_copy()
    assert not fused.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert fused.decoder.convs[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(fused.reconstruct(x), model.reconstruct(x), atol=1e-5)
        z = torch.randn(5, 4)
        assert torch.allclose(fused.decode(z), model.decode(z), atol=1e-5)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model is untouched


def test_precision_autocasts_and_unknown_precisions_are_refused():
    assert Precision(torch.device("cpu"), "fp32").scaler is None
    with Precision(torch.device("cpu"), "bf16").autocast():
        y = torch.nn.Linear(4, 4)(torch.rand(2, 4))
    assert y.dtype == torch.bfloat16
    with pytest.raises(TorchVaeError, match="unknown --precision"):
        Precision(torch.device("cpu"), "fp8")
    with pytest.raises(TorchVaeError, match="unknown --precision"):
        TrainConfig(precision="half")
    model = torch.nn.Linear(2, 2)
    assert maybe_compile(model, False) is model and unwrap(model) is model


def _train(mnist_dir, run, *extra):
    argv = ["train", "--dataset", "mnist", "--data_dir", str(mnist_dir), "--run_dir", str(run)]
    argv += ["--epochs", "1", "--batchsize", "16", "--latent_dims", "3", "--max_filters", "16"]
    argv += ["--image_size", "32", "--quiet", *extra]
    return main(argv)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_train_mixed_precision_on_cpu(mnist_dir, tmp_path, precision):
    run = tmp_path / "run"
    assert _train(mnist_dir, run, "--precision", precision) == 0
    record = json.loads((run / "metrics.jsonl").read_text())
    assert np.isfinite(record["train_loss"]) and np.isfinite(record["val_loss"])
    assert json.loads((run / "config.json").read_text())["train"]["precision"] == precision
    # weights stay fp32
    assert load_model(run).encoder.convs[0].weight.dtype == torch.float32


@pytest.mark.slow
def test_train_compiled_checkpoint_has_plain_keys(mnist_dir, tmp_path):
    """torch.compile on the CPU: needs a C compiler and compiles for 20-60 s, hence slow."""
    run = tmp_path / "run"
    assert _train(mnist_dir, run, "--compile", "--max_steps", "2") == 0
    for path in (run / "model.safetensors", run / "checkpoints" / "epoch_001.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
        assert keys and not any("_orig_mod" in k for k in keys)
    state = torch.load(run / "ckpt.pt", weights_only=True)
    assert state["step"] == 2
    model = load_model(run)
    with torch.no_grad():
        assert model.reconstruct(torch.rand(2, 1, 32, 32)).shape == (2, 1, 32, 32)


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(tmp_path, monkeypatch):
    import torch_vae.runtime.precision as speed
    from torch_vae.runtime.device import cpu_bf16_native

    info = tmp_path / "cpuinfo"
    for flags, native in [("fpu avx512f avx512_bf16", True), ("fpu amx_bf16 amx_tile", True),
                          ("fpu avx2 avx512f", False)]:  # fmt: skip
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert cpu_bf16_native.__wrapped__(str(info)) is native
    assert cpu_bf16_native.__wrapped__(str(tmp_path / "missing")) is False
    cpu = torch.device("cpu")
    for native, expected in [(True, "bf16"), (False, "fp32")]:
        monkeypatch.setattr(speed, "bf16_native", lambda device, n=native: n)
        assert speed.resolve_precision("auto", cpu) == expected
        assert Precision(cpu, "auto").precision == expected
        assert speed.resolve_precision("fp32", cpu) == "fp32"  # explicit choices are kept
    assert TrainConfig().precision == "auto"


@pytest.mark.parametrize("native", [True, False])
def test_train_records_the_precision_auto_chose(mnist_dir, tmp_path, monkeypatch, native):
    import torch_vae.runtime.precision as speed

    monkeypatch.setattr(speed, "bf16_native", lambda device: native)
    run = tmp_path / "run"
    assert _train(mnist_dir, run, "--max_steps", "2") == 0
    chosen = json.loads((run / "config.json").read_text())["train"]["precision"]
    assert chosen == ("bf16" if native else "fp32")
    # a resume on a machine that would choose otherwise keeps the run's precision
    monkeypatch.setattr(speed, "bf16_native", lambda device: not native)
    resume = ["train", "--resume", str(run), "--data_dir", str(mnist_dir), "--max_steps", "4"]
    assert main([*resume, "--quiet"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["precision"] == chosen


# bf16 training against fp32, on one batch of the original architecture at 64x64 (latent 8,
# batch 32): the loss within 1% and every parameter's gradient within 20% (relative L2 error)
# and pointing the same way (cosine >= 0.99). Measured: loss 0.03%, gradients 0.2-13%, cosine
# >= 0.991 (docs/benchmarks.md). Left out: the biases of the convolutions followed by batch
# norm, whose true gradient is 0 (the norm subtracts them), so both are rounding noise.
BF16_LOSS_RTOL, BF16_GRAD_RTOL, BF16_GRAD_COS = 0.01, 0.2, 0.99


def test_bf16_training_step_is_within_tolerance_of_fp32():
    from torch_vae.models.losses import vae_loss

    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_dims=8)).to(memory_format=torch.channels_last).train()
    x = torch.rand(32, 1, 64, 64).contiguous(memory_format=torch.channels_last)
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(1)  # the same reparameterisation noise
        model.zero_grad(set_to_none=True)
        with Precision(torch.device("cpu"), precision).autocast():
            out = model(x)
        loss = vae_loss(out, x)["loss"]
        loss.backward()
        results[precision] = (loss.item(), [p.grad.clone() for p in model.parameters()])
    (loss32, grads32), (loss16, grads16) = results["fp32"], results["bf16"]
    assert abs(loss16 - loss32) <= BF16_LOSS_RTOL * abs(loss32)
    largest = max(g.norm() for g in grads32)
    for g32, g16 in zip(grads32, grads16, strict=True):
        assert g16.dtype == torch.float32  # the weights and their gradients stay fp32
        if g32.norm() < 1e-4 * largest:  # a bias before batch norm: zero up to rounding
            continue
        err = (g16 - g32).norm() / g32.norm().clamp_min(1e-12)
        cos = torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0)
        assert err <= BF16_GRAD_RTOL and cos >= BF16_GRAD_COS, (err.item(), cos.item())


def test_png_writer_writes_every_batch_while_the_caller_goes_on(tmp_path):
    from torch_vae.io.png import PngWriter

    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8) for _ in range(5)]
    with PngWriter(ahead=2, workers=2) as writer:
        for b, images in enumerate(batches):
            writer.submit(images, [tmp_path / f"{b}_{i}.png" for i in range(len(images))])
            assert len(writer.batches) <= 2  # at most `ahead` batches in flight
    for b, images in enumerate(batches):
        for i, image in enumerate(images):
            with Image.open(tmp_path / f"{b}_{i}.png") as f:
                assert np.array_equal(np.asarray(f)[..., None], image)


def test_png_writer_raises_a_failed_write_at_the_end(tmp_path):
    from torch_vae.io.png import PngWriter

    images = np.zeros((3, 4, 4, 1), np.uint8)
    with pytest.raises(FileNotFoundError), PngWriter() as writer:
        writer.submit(images, [tmp_path / "gone" / f"{i}.png" for i in range(3)])


def test_generate_on_a_full_disk_leaves_no_half_written_png(tmp_path, monkeypatch, capsys):
    """A write that fails midway (ENOSPC on the 10th file) stops generate with one line naming
    the file; the folder keeps what it held (here nothing), no half-written PNG, no stage."""
    import errno
    import itertools

    import torch_vae.io.png as images

    real_open, calls = open, itertools.count(1)  # next() is atomic: the writer has threads

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    def filling_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return Full(f) if next(calls) == 10 else f

    model = tmp_path / "m.safetensors"
    save_model(VAE(ModelConfig(latent_dims=2, max_filters=8)), model)
    monkeypatch.setattr(images, "open", filling_open, raising=False)
    out = tmp_path / "s"
    args = ["generate", "--model", str(model), "--outdir", str(out), "--nsamples", "40"]
    assert main([*args, "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and str(out) in err[0], err
    assert list(out.iterdir()) == []  # the images written before the failure went with it


@pytest.mark.parametrize("n,batch", [(1, 1), (4096, 500), (4097, 500), (30000, 500), (9000, 4096)])
def test_generate_progress_total_counts_every_batch(n, batch):
    from torch_vae.analysis.pictures import batch_count, latent_batches

    draw = lambda k, gen: torch.zeros(k, 2)  # noqa: E731
    assert batch_count(n, batch) == sum(1 for _ in latent_batches(n, 0, batch, draw))

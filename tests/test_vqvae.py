"""The VQ-VAE (``--arch vqvae``, models/vqvae.py) and the autoregressive prior over its code grids
(``fit-sampler --sampler transformer``, priors/transformer.py): the codebook's moving averages
and restarts, code indices in and out, the commands on a tiny run, and the prior's fit, seeded
sampling, file round trip and refusals. What every family keeps is in test_models_contract.py."""

import contextlib
import json
import logging
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.nn.attention import SDPBackend

from torch_vae import VAE, TorchVaeError, load_model
from torch_vae.cli import main
from torch_vae.models import model_class
from torch_vae.models.vqvae import Codebook
from torch_vae.priors import fit_prior, load_sampler, read_sampler, save_sampler
from torch_vae.priors.transformer import CodeTransformer

TINY_PRIOR = {"hidden": 32, "layers": 1, "batch": 32, "seed": 0}


def tiny_vq(**fields) -> VAE:
    torch.manual_seed(0)
    return VAE(model_class("vqvae").config_class.tiny(image_size=32, **fields))


def test_the_codebook_moves_each_code_to_the_mean_of_the_vectors_assigned_to_it():
    book = Codebook(size=2, dims=2, decay=0.0, restart_after=1000).train()
    book.embedding.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    book.idle.zero_()  # no code is restarted: the codes stay where they were put
    near = torch.tensor([[1.0, 0.0], [0.0, 3.0], [9.0, 9.0], [12.0, 13.0]])
    codes = book(near.T.reshape(1, 2, 2, 2))  # (B, D, h, w): 4 vectors
    assert codes.indices.flatten().tolist() == [0, 0, 1, 1]
    # decay 0: each code is the mean of its vectors (up to the counts' smoothing)
    assert torch.allclose(book.embedding, torch.tensor([[0.5, 1.5], [10.5, 11.0]]), atol=1e-3)
    assert book.idle.tolist() == [0, 0]


def test_a_code_unused_for_restart_after_steps_restarts_at_a_vector_of_the_batch():
    book = Codebook(size=3, dims=2, decay=0.9, restart_after=3).train()
    first = torch.randn(1, 2, 4, 4)
    # every code starts at 0, so the first batch goes to code 0 (which moves towards its
    # mean), and the codes no vector went to restart at once, at vectors of the batch
    book(first)
    assert book.idle.tolist() == [0, 0, 0]
    batch_vectors = first.permute(0, 2, 3, 1).reshape(-1, 2)
    assert all((batch_vectors == e).all(1).any() for e in book.embedding[1:])
    assert torch.allclose(book.embedding[0], batch_vectors.mean(0), atol=1e-3)
    book.embedding.copy_(torch.tensor([[0.0, 0.0], [50.0, 50.0], [-50.0, -50.0]]))
    lone = torch.zeros(1, 2, 2, 2) + 0.1  # every vector goes to code 0
    for _ in range(2):
        book(lone)
    assert book.idle.tolist() == [0, 2, 2]
    book(lone)  # the third step without them: codes 1 and 2 restart at these vectors
    assert book.idle.tolist() == [0, 0, 0]
    assert torch.allclose(book.embedding[1:], torch.full((2, 2), 0.1))


def test_code_indices_decode_to_the_reconstruction_and_round_trip():
    model = tiny_vq().eval()
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        codes = model.encode(x)
        assert (
            codes.indices.shape == (5, *model.latent_shape) and codes.indices.dtype == torch.int64
        )
        assert torch.equal(model.code_vectors(codes.indices), codes.z_q)
        assert torch.equal(model.quantize(codes.z_e), codes.indices)
        from_indices = model.decode(codes.indices)
        assert torch.equal(from_indices, model.decode(codes.z_q))
        assert torch.equal(from_indices, model.reconstruct(x))
    assert codes.kl().shape == (5,)
    assert torch.allclose(codes.kl(), torch.full((5,), 64 * np.log(16.0)))  # h w log K


def test_bad_code_indices_are_one_line_errors():
    model = tiny_vq().eval()
    with pytest.raises(TorchVaeError, match=r"code indices must be \(N, 8, 8\) for this model"):
        model.decode(torch.zeros(2, 4, 4, dtype=torch.int64))
    with pytest.raises(TorchVaeError, match=r"must lie in 0\.\.15, got 16\.\.16"):
        model.decode(torch.full((1, 8, 8), 16))


def test_the_codebook_state_is_saved_and_a_copy_encodes_alike(tmp_path):
    model = tiny_vq().train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 1, 32, 32))
    model.eval().save_pretrained(tmp_path / "m")
    again = load_model(tmp_path / "m")
    for name in ("embedding", "ema_count", "ema_sum", "idle", "updates"):
        assert torch.equal(getattr(again.codebook, name), getattr(model.codebook, name)), name
    assert int(again.codebook.updates) == 3
    x = torch.rand(4, 1, 32, 32)
    assert torch.equal(again.encode(x).indices, model.encode(x).indices)


def test_vq_config_values_out_of_range_are_one_line():
    cls = model_class("vqvae").config_class
    for field, value, message in (("codebook_size", 1, "--codebook_size must be at least 2"),
                                  ("ema_decay", 1.0, "--ema_decay must be below 1"),
                                  ("commitment", -1.0, "--commitment")):  # fmt: skip
        with pytest.raises(TorchVaeError, match=message):
            cls.tiny(**{field: value})


# --- the commands on a tiny run ---------------------------------------------------------


def test_training_records_the_commitment_loss_and_evaluate_the_codebook(vq_run, mnist_dir):
    record = json.loads((vq_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"train_loss", "train_recon", "train_commit", "val_commit", "val_mse"} <= set(record)
    assert "train_kl" not in record
    model = load_model(vq_run)
    beta = 1.0
    want = record["val_recon"] + beta * model.config.commitment * record["val_commit"]
    assert record["val_loss"] == pytest.approx(want)
    report = vq_run / "eval.json"
    assert main(["evaluate", "--model", str(vq_run), "--nimages", "8", "--iw_samples", "4",
                 "--report", str(report), "--data_dir", str(mnist_dir),
                 "--quiet"]) == 0  # fmt: skip
    r = json.loads(report.read_text())
    assert r["codebook_size"] == 16 and 1 <= r["codes_used"] <= 16
    assert 1 <= r["perplexity"] <= r["codes_used"] + 1e-9
    assert r["kl"] == pytest.approx(64 * np.log(16))  # a point mass against the uniform prior
    assert "active_units" not in r and np.isfinite(r["nll"])


def test_refine_steps_and_gaussian_samplers_are_refused_for_a_vq_model(vq_run, mnist_dir, capsys):
    common = ["--model", str(vq_run), "--data_dir", str(mnist_dir), "--quiet"]
    assert main(["evaluate", *common, "--nimages", "4", "--refine_steps", "2"]) == 1
    assert "this model's latent is discrete" in capsys.readouterr().err
    assert main(["fit-sampler", *common, "--sampler", "gmm"]) == 1
    err = capsys.readouterr().err
    assert "a gmm sampler cannot be fitted to a model with a discrete latent" in err
    assert "choose one of transformer" in err and err.count("\n") == 1


def test_fit_sampler_transformer_then_generate_draws_from_it(vq_run, mnist_dir, tmp_path, caplog):
    assert main(["fit-sampler", "--model", str(vq_run), "--sampler", "transformer",
                 "--steps", "5", "--data_dir", str(mnist_dir), "--quiet"]) == 0  # fmt: skip
    prior = load_sampler(vq_run, "transformer")
    assert prior.info["grid"] == [8, 8] and prior.info["codebook_size"] == 16
    score = prior.info["validation"]
    assert np.isfinite(score["fd"])
    # the held-out grids' NLL per code and its own draws': between 0 and log 16 plus the
    # little a 5-step fit can be worse than uniform
    assert 0 < score["nll"] < 4 and 0 < score["sample_nll"] < 4
    model = load_model(vq_run)
    grids = prior.sample(6, torch.Generator().manual_seed(0))  # as drawn: no model attached
    with torch.no_grad():
        trip = model.encode(model.decode(grids)).indices  # one round trip, the default
    assert not torch.equal(trip, grids)  # else the two runs below could not tell them apart
    fast = model.inference_copy()
    for flags, codes in (([], trip), (["--round_trips", "0"], grids)):  # --sampler auto
        out = tmp_path / f"gen{len(flags)}"
        assert main(["generate", "--model", str(vq_run), "--nsamples", "6", "--outdir",
                     str(out), "--quiet", *flags]) == 0  # fmt: skip
        want = (fast.decode(codes) * 255).round().to(torch.uint8)[:, 0].numpy()
        got = np.stack([np.asarray(Image.open(out / f"sample_{i:05d}.png")) for i in range(6)])
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, flags
    with caplog.at_level("WARNING", logger="torch_vae"):  # noise, and the prior it has
        assert main(["generate", "--model", str(vq_run), "--nsamples", "2", "--outdir",
                     str(tmp_path / "own"), "--sampler", "prior"]) == 0  # fmt: skip
    assert "noise; leave --sampler out to draw from the transformer prior fitted" in caplog.text


def test_a_round_trip_decodes_and_encodes_the_drawn_grid_with_a_cpu_float32_eval_copy():
    model = tiny_vq()
    with torch.no_grad():  # a few training passes set the codebook (restarts at batch vectors)
        for _ in range(3):
            model.train()(torch.rand(16, 1, 32, 32))
    info = {"codebook_size": 16, "latent_dims": 3}
    prior = fit_prior(repeated_codes(40, grid=(8, 8)), "transformer",
                      {**TINY_PRIOR, "steps": 3}, info, progress=False)  # fmt: skip
    drawn = prior.sample(12, torch.Generator().manual_seed(3))  # no model: as drawn
    assert "round trip" not in prior.describe()
    book = model.codebook.embedding.clone()
    prior.use_model(model)  # left in training mode: the prior's copy is in eval mode
    with torch.no_grad():
        model.eval()
        once = model.encode(model.decode(drawn)).indices
        twice = model.encode(model.decode(once)).indices
        model.train()
    assert not torch.equal(once, drawn)
    seen = []  # the dtypes the copy's encoder and decoder give, even under bf16 autocast
    for part in (prior.model.encoder, prior.model.decoder):
        part.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    for trips, want in ((0, drawn), (1, once), (2, twice)):
        prior.round_trips = trips
        assert torch.equal(prior.sample(12, torch.Generator().manual_seed(3)), want), trips
        with torch.autocast("cpu", torch.bfloat16):  # as generate --precision bf16 decodes
            got = prior.round_trip(drawn)
            assert torch.equal(prior.sample(12, torch.Generator().manual_seed(3)), want)
        assert got.dtype == torch.int64 and torch.equal(got, want), trips
    assert len(seen) == 3 * 2 * (1 + 2) and set(seen) == {torch.float32}  # 3 calls per trip
    # the caller's model untouched: still training, its codebook where it was
    assert model.training and torch.equal(model.codebook.embedding, book)
    assert "then 2 round trips through the model" in prior.describe()
    # batches of ROUND_TRIP_BATCH give what one batch gives
    from torch_vae.priors import transformer

    prior.round_trips = 1
    whole = prior.round_trip(drawn)
    transformer.ROUND_TRIP_BATCH, kept = 5, transformer.ROUND_TRIP_BATCH
    try:
        assert torch.equal(prior.round_trip(drawn), whole)
    finally:
        transformer.ROUND_TRIP_BATCH = kept


def test_round_trips_need_the_model_the_prior_was_fitted_to():
    from torch_vae.priors.base import set_drawing

    info = {"codebook_size": 16, "latent_dims": 3}
    prior = fit_prior(repeated_codes(20, grid=(8, 8)), "transformer",
                      {**TINY_PRIOR, "steps": 1}, info, progress=False)  # fmt: skip
    others = {
        "a gaussian latent": VAE(model_class("dcgan").config_class.tiny(image_size=32)),
        "8x8 grids of 32 3-d codes": tiny_vq(codebook_size=32),
        "4x4 grids of 16 3-d codes": tiny_vq(depth=3),
    }
    for words, other in others.items():
        with pytest.raises(TorchVaeError, match="the model given takes " + words) as err:
            prior.use_model(other)
        assert "\n" not in str(err.value) and prior.model is None
    with pytest.raises(TorchVaeError, match=r"use_model takes the VAE .* got Linear$"):
        prior.use_model(torch.nn.Linear(2, 2))
    with pytest.raises(TorchVaeError, match=r"--round_trips goes through the model"):
        set_drawing(prior, "m", round_trips=2)  # asked for, and no model to go through
    set_drawing(prior, "m", round_trips=0)  # none asked for: no model needed
    model = tiny_vq().double()
    set_drawing(prior, "m", round_trips=2, model=model)
    assert prior.round_trips == 2 and prior.model is not model
    assert {(p.dtype, p.device.type) for p in prior.model.parameters()} == {(torch.float32, "cpu")}
    assert not prior.model.training and next(model.parameters()).dtype == torch.float64


def test_fit_sampler_records_and_logs_a_transformer_s_held_out_and_own_draw_nll(
    vq_run, mnist_dir, monkeypatch, caplog
):
    from torch_vae.priors.transformer import TransformerPrior

    fit = ["fit-sampler", "--model", str(vq_run), "--sampler", "transformer", "--steps", "2",
           "--data_dir", str(mnist_dir)]  # fmt: skip
    values = iter((3.0625, 2.8125))  # the held-out grids', then its own draws'
    monkeypatch.setattr(TransformerPrior, "nll", lambda self, g, labels=None: next(values))
    caplog.set_level("INFO")
    assert main(fit) == 0
    score = load_sampler(vq_run, "transformer").info["validation"]
    assert (score["nll"], score["sample_nll"]) == (3.0625, 2.8125)
    assert "code grids: 3.0625 nats" in caplog.text and "(its entropy): 2.8125" in caplog.text
    assert re.search(r"fitted a causal transformer .* to \d+ code grids in", caplog.text)


def test_a_transformer_sampler_is_refused_for_a_gaussian_model(train_tiny, mnist_dir, tmp_path,
                                                               capsys):  # fmt: skip
    run = train_tiny(tmp_path / "run", "--val_images", "4")
    assert main(["fit-sampler", "--model", str(run), "--sampler", "transformer",
                 "--data_dir", str(mnist_dir), "--quiet"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "a transformer sampler cannot be fitted to a model with a gaussian latent" in err


# --- the transformer prior on its own ---------------------------------------------------


def repeated_codes(n=400, grid=(3, 3), codes=8, seed=0) -> np.ndarray:
    """Grids that repeat one code, one of the first four: a prior that learned them draws
    such grids; the uniform prior almost never does."""
    g = torch.Generator().manual_seed(seed)
    first = torch.randint(4, (n, 1, 1), generator=g)
    return first.expand(n, *grid).numpy().copy()


def fit_tiny(z, steps=5):
    info = {"codebook_size": 8, "latent_dims": 4, "note": "test"}
    return fit_prior(z, "transformer", {**TINY_PRIOR, "steps": steps}, info, progress=False)


def test_the_transformer_prior_learns_grids_of_one_repeated_code():
    info = {"codebook_size": 8, "latent_dims": 4}
    options = {**TINY_PRIOR, "hidden": 64, "steps": 300}
    prior = fit_prior(repeated_codes(), "transformer", options, info, progress=False)
    grids = prior.sample(200, torch.Generator().manual_seed(1))
    assert grids.shape == (200, 3, 3) and grids.dtype == torch.int64
    constant = (grids == grids[:, :1, :1]).flatten(1).all(1).float().mean()
    assert constant > 0.8, constant  # the uniform prior: 8**-8 of them
    assert (grids[:, 0, 0] < 4).float().mean() > 0.95  # the data's four codes (uniform: 0.5)
    # nats per code: log 8 = 2.08 knows nothing; the first code's log 4 over 9 codes, 0.154,
    # is the least there is
    assert prior.info["final_loss"] < 0.3
    held = repeated_codes(100, seed=5)  # grids like the data, not fitted to
    noise = torch.randint(8, (100, 3, 3), generator=torch.Generator().manual_seed(0))
    assert prior.nll(held) < 0.3 < 1.5 < prior.nll(noise)
    assert abs(prior.nll(grids) - prior.nll(held)) < 0.1  # its own draws: as likely as the data


def test_transformer_sampling_is_seeded_and_survives_the_file_round_trip(tmp_path):
    prior = fit_tiny(repeated_codes(50))
    a = prior.sample(20, torch.Generator().manual_seed(3))
    assert torch.equal(a, prior.sample(20, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, prior.sample(20, torch.Generator().manual_seed(4)))
    back = read_sampler(save_sampler(prior, tmp_path / "sampler-transformer.safetensors"))
    assert back.kind == "transformer" and back.info["note"] == "test" and back.grid == (3, 3)
    assert torch.equal(back.sample(20, torch.Generator().manual_seed(3)), a)


def test_forged_transformer_files_and_wrong_latents_are_one_line(tmp_path):
    prior = fit_tiny(repeated_codes(50))
    path = save_sampler(prior, tmp_path / "s.safetensors")
    tensors = load_file(str(path))
    some = next(k for k in tensors if tensors[k].dim() == 2)

    def forged(name, t, info=None):
        p = tmp_path / f"{name}.safetensors"
        meta = {"format": "torch-vae-sampler", "info": json.dumps(info or prior.info)}
        save_file(t, str(p), metadata=meta)
        return p

    cases = {
        "nan": ({**tensors, some: torch.full_like(tensors[some], float("nan"))}, None),
        "shape": ({**tensors, some: torch.zeros(3, 3)}, None),
        "extra": ({**tensors, "other": torch.zeros(1)}, None),
        "grid": (tensors, {**prior.info, "grid": [3, 10**9]}),
        "codes": (tensors, {**prior.info, "codebook_size": "many"}),
    }
    for name, (t, info) in cases.items():
        with pytest.raises(TorchVaeError) as err:
            read_sampler(forged(name, t, info))
        assert "\n" not in str(err.value) and "fit it again" in str(err.value), name
    with pytest.raises(TorchVaeError, match="fitted to a discrete model's code grids"):
        fit_prior(np.random.randn(20, 4), "transformer", TINY_PRIOR, {}, progress=False)
    with pytest.raises(TorchVaeError, match="indices outside the codebook"):
        fit_tiny(repeated_codes(20) + 8)


def test_transformer_dropout_acts_while_fitting_only_and_is_kept_in_the_file(tmp_path):
    info = {"codebook_size": 8, "latent_dims": 4}
    options = {**TINY_PRIOR, "steps": 5, "dropout": 0.5}
    prior = fit_prior(repeated_codes(50), "transformer", options, info, progress=False)
    assert prior.info["hparams"]["dropout"] == 0.5 and "dropout 0.5" in prior.describe()
    codes = torch.as_tensor(repeated_codes(20)).flatten(1)
    net = prior.net
    assert not net.training  # a fitted prior samples without dropout: the same loss twice
    assert net.loss(codes).item() == net.loss(codes).item()
    net.train()
    torch.manual_seed(0)
    noisy = [net.loss(codes).item() for _ in range(3)]
    net.eval()
    assert len(set(noisy)) == 3  # half of the activations dropped, differently each time
    a = prior.sample(10, torch.Generator().manual_seed(2))
    assert torch.equal(a, prior.sample(10, torch.Generator().manual_seed(2)))
    back = read_sampler(save_sampler(prior, tmp_path / "sampler-transformer.safetensors"))
    assert back.info["hparams"]["dropout"] == 0.5
    assert torch.equal(back.sample(10, torch.Generator().manual_seed(2)), a)
    plain = fit_prior(repeated_codes(50), "transformer", {**TINY_PRIOR, "steps": 5}, info,
                      progress=False)  # fmt: skip
    assert plain.info["hparams"]["dropout"] == 0.0 and "dropout" not in plain.describe()


def test_transformer_fit_precision_bf16_computes_in_bf16_fp32_does_not_and_auto_follows_cpu(
    monkeypatch, caplog
):
    info = {"codebook_size": 8, "latent_dims": 4}
    z = repeated_codes(64, grid=(4, 4))
    logits = []  # the dtype of the network's logits at each call
    forward = CodeTransformer.forward

    def spy(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        logits.append(out.dtype)
        return out

    kernels = []  # the attention backends a fit asks for
    monkeypatch.setattr(CodeTransformer, "forward", spy)

    def kernel(backend):
        kernels.append(backend)
        return contextlib.nullcontext()

    monkeypatch.setattr("torch_vae.priors.transformer.sdpa_kernel", kernel)
    fits = {}
    for p in ("fp32", "bf16"):
        logits.clear()
        kernels.clear()
        fits[p] = fit_prior(z, "transformer", {**TINY_PRIOR, "steps": 20, "precision": p}, info,
                            progress=False)  # fmt: skip
        assert logits == [torch.float32 if p == "fp32" else torch.bfloat16] * 20, p
        assert kernels == ([SDPBackend.MATH] * 20 if p == "bf16" else []), p
    assert [fits[p].info["precision"] for p in fits] == ["fp32", "bf16"]
    a, b = fits["fp32"].info["final_loss"], fits["bf16"].info["final_loss"]
    assert a != b and abs(a - b) < 0.2, (a, b)  # rounded differently, learned alike
    # the fitted weights stay float32, and a bf16 fit draws and scores in float32
    assert all(t.dtype == torch.float32 for t in fits["bf16"].net.state_dict().values())
    logits.clear()
    drawn = fits["bf16"].sample(5, torch.Generator().manual_seed(1))
    fits["bf16"].nll(drawn)
    assert logits and set(logits) == {torch.float32}
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr("torch_vae.runtime.precision.bf16_native", lambda d, n=native: n)
        prior = fit_prior(z, "transformer", {**TINY_PRIOR, "steps": 2}, info, progress=False)
        assert prior.info["precision"] == want
    # bf16 asked for where the CPU would emulate it: fitted as asked, with a warning
    monkeypatch.setattr("torch_vae.runtime.precision.bf16_native", lambda d: False)
    monkeypatch.setattr("torch_vae.runtime.precision.platform.machine", lambda: "x86_64")
    with caplog.at_level("WARNING", logger="torch_vae.priors.transformer"):
        prior = fit_prior(z, "transformer", {**TINY_PRIOR, "steps": 2, "precision": "bf16"},
                          info, progress=False)  # fmt: skip
    assert prior.info["precision"] == "bf16" and "by emulation" in caplog.text
    with pytest.raises(TorchVaeError, match="unknown precision 'fp16'") as err:
        fit_prior(z, "transformer", {**TINY_PRIOR, "steps": 2, "precision": "fp16"}, info,
                  progress=False)  # fmt: skip
    assert "\n" not in str(err.value)


def test_transformer_store_fp16_halves_the_file_scores_the_rounded_weights_and_reads_back_alike(
    tmp_path, monkeypatch, caplog
):
    info = {"codebook_size": 8, "latent_dims": 4}
    z = repeated_codes(64, grid=(4, 4))
    options = {**TINY_PRIOR, "steps": 20, "precision": "fp32"}
    full = fit_prior(z, "transformer", options, dict(info), progress=False)
    half = fit_prior(z, "transformer", {**options, "store": "fp16"}, dict(info), progress=False)
    assert full.info["stored"] == "fp32" and half.info["stored"] == "fp16"
    assert "float16" in half.describe() and "float16" not in full.describe()
    # the same fit, its weights rounded to float16 at once (still computed with in float32)
    a, b = full.net.state_dict(), half.net.state_dict()
    assert all(b[k].dtype == torch.float32 for k in b)
    assert all(torch.equal(b[k], a[k].half().float()) for k in a)
    assert any(not torch.equal(b[k], a[k]) for k in a)
    paths = [save_sampler(p, tmp_path / f"{n}.safetensors") for n, p in (("a", full), ("b", half))]
    sizes = [p.stat().st_size for p in paths]
    assert sizes[1] < 0.55 * sizes[0], sizes
    stored = load_file(str(paths[1]))
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    assert json.loads(paths[1].with_suffix(".json").read_text())["stored"] == "fp16"
    # what was measured in memory is what the file gives back: the same draws and likelihood
    back = read_sampler(paths[1])
    draw = [p.sample(20, torch.Generator().manual_seed(3)) for p in (half, back)]
    assert torch.equal(draw[0], draw[1]) and back.nll(draw[0]) == half.nll(draw[0])
    # a weight float16 cannot hold: kept in float32, with a warning, the fit not lost
    with torch.no_grad():
        full.net.head.bias[0] = 1e5
    with caplog.at_level("WARNING", logger="torch_vae.priors.transformer"):
        full.store_as("fp16")
    assert full.info["stored"] == "fp32" and "beyond float16's range" in caplog.text
    assert full.net.head.bias[0] == 1e5
    # an unknown store precision is refused in one line before any fitting
    monkeypatch.setattr("torch_vae.priors.transformer.train_steps", lambda *a, **k: 1 / 0)
    with pytest.raises(TorchVaeError, match="unknown store precision 'bf16'") as err:
        fit_prior(z, "transformer", {**options, "store": "bf16"}, dict(info), progress=False)
    assert "\n" not in str(err.value)


def test_a_sampler_file_with_a_bad_dropout_is_one_line(tmp_path):
    prior = fit_tiny(repeated_codes(50))
    path = save_sampler(prior, tmp_path / "s.safetensors")
    for bad in (1.5, -0.1, "high", True):
        info = {**prior.info, "hparams": {**prior.info["hparams"], "dropout": bad}}
        forged = tmp_path / "forged.safetensors"
        save_file(load_file(str(path)), str(forged),
                  metadata={"format": "torch-vae-sampler", "info": json.dumps(info)})  # fmt: skip
        with pytest.raises(TorchVaeError) as err:
            read_sampler(forged)
        assert "dropout must be a number from 0 to 0.9" in str(err.value), bad
        assert "\n" not in str(err.value)


def test_fit_sampler_dropout_precision_store_flags_are_checked_and_refused_without_a_transformer(
    vq_run, train_tiny, mnist_dir, tmp_path, capsys
):
    fit = ["fit-sampler", "--data_dir", str(mnist_dir), "--quiet"]
    assert main([*fit, "--model", str(vq_run), "--sampler", "transformer", "--dropout", "2"]) == 1
    assert "--dropout must be a number from 0 to 0.9, got 2" in capsys.readouterr().err
    assert load_sampler(vq_run, "transformer") is None
    run = train_tiny(tmp_path / "gaussian", "--val_images", "4")
    assert main([*fit, "--model", str(run), "--sampler", "flow", "--dropout", "0.1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--dropout regularises the network of a transformer sampler" in err, err
    assert "\n" not in err and load_sampler(run, "flow") is None
    assert main([*fit, "--model", str(vq_run), "--sampler", "transformer", "--steps", "3",
                 "--dropout", "0.2", "--nscore", "0"]) == 0  # fmt: skip
    assert load_sampler(vq_run, "transformer").info["hparams"]["dropout"] == 0.2
    assert main([*fit, "--model", str(run), "--sampler", "gmm", "--precision", "bf16"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--precision bf16 applies to a transformer sampler's fit" in err, err
    assert "\n" not in err and load_sampler(run, "gmm") is None
    assert main([*fit, "--model", str(run), "--sampler", "gaussian", "--precision", "fp32",
                 "--nscore", "0"]) == 0  # fmt: skip
    assert load_sampler(run, "gaussian") is not None  # fp32: how every other kind fits
    with pytest.raises(SystemExit):  # argparse: its usage and error line, exit status 2
        main([*fit, "--model", str(vq_run), "--sampler", "transformer", "--precision", "fp16"])
    assert "argument --precision: invalid choice: 'fp16'" in capsys.readouterr().err
    assert main([*fit, "--model", str(vq_run), "--sampler", "transformer", "--steps", "3",
                 "--precision", "fp32", "--nscore", "0", "--overwrite"]) == 0  # fmt: skip
    assert load_sampler(vq_run, "transformer").info["precision"] == "fp32"
    assert main([*fit, "--model", str(run), "--sampler", "flow", "--store", "fp16"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--store fp16 applies to a transformer sampler's weights" in err, err
    assert "\n" not in err and load_sampler(run, "flow") is None
    assert main([*fit, "--model", str(vq_run), "--sampler", "transformer", "--steps", "3",
                 "--store", "fp16", "--nscore", "0", "--overwrite"]) == 0  # fmt: skip
    assert load_sampler(vq_run, "transformer").info["stored"] == "fp16"


def test_average_refuses_a_vq_run_in_one_line(vq_run, tmp_path, capsys):
    assert main(["average", str(vq_run), "--last", "1", "--out", str(tmp_path / "avg"),
                 "--quiet"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "average takes models with a Gaussian latent" in err and err.count("\n") == 1
    assert not (tmp_path / "avg").exists()


def test_a_conditional_transformer_prior_draws_the_grids_of_the_class_asked_for():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(4, (400,), generator=g)
    grids = labels[:, None, None].expand(400, 3, 3).numpy().copy()  # class c: code c everywhere
    info = {"codebook_size": 8, "latent_dims": 4, "classes": 4}
    options = {**TINY_PRIOR, "hidden": 64, "steps": 300}
    prior = fit_prior(grids, "transformer", options, info, progress=False, labels=labels)
    want = torch.tensor([0, 1, 2, 3] * 25)
    drawn = prior.sample(100, torch.Generator().manual_seed(1), labels=want)
    right = (drawn == want[:, None, None]).flatten(1).all(1).float().mean()
    assert right > 0.8, right  # an unconditional prior: a quarter at best
    with pytest.raises(TorchVaeError, match="draws the code grids of a class"):
        prior.sample(3, torch.Generator().manual_seed(1))
    with pytest.raises(TorchVaeError, match=r"labels must be 2 classes in 0\.\.3"):
        prior.sample(2, torch.Generator().manual_seed(1), labels=torch.tensor([0, 4]))
    # scoring grids checks their classes as drawing does
    assert prior.nll(drawn, want) < prior.nll(drawn, (want + 1) % 4)
    with pytest.raises(TorchVaeError, match="scores the code grids of a class"):
        prior.nll(drawn)
    with pytest.raises(TorchVaeError, match=r"labels must be 100 classes in 0\.\.3"):
        prior.nll(drawn, want + 1)
    with pytest.raises(TorchVaeError, match="needs each grid's class"):
        fit_prior(grids, "transformer", options, info, progress=False)


def test_generate_from_a_conditional_vq_model_draws_each_class_s_grids(
    mnist_dir, labelled, tmp_path, caplog
):
    config = tmp_path / "flags.json"
    flags = {"arch": "vqvae", "image_size": 32, "max_filters": 16, "latent_dims": 4,
             "codebook_size": 16, "blocks": 1}  # fmt: skip
    config.write_text(json.dumps(flags))
    run = tmp_path / "run"
    common = ["--data_dir", str(mnist_dir), "--quiet", "--cpu"]
    assert main(["train", "--dataset", "mnist", "--conditional", "--config", str(config),
                 "--max_steps", "4", "--batchsize", "8", "--val_images", "4", "--run_dir",
                 str(run), *common]) == 0  # fmt: skip
    assert main(["fit-sampler", "--model", str(run), "--sampler", "transformer", "--steps", "5",
                 "--nscore", "4", *common]) == 0  # fmt: skip
    prior = load_sampler(run, "transformer")
    assert prior.classes == 10
    with caplog.at_level("INFO", logger="torch_vae"):  # refused before the prior is read
        assert main(["generate", "--model", str(run), "--class", "12", "--outdir",
                     str(tmp_path / "none"), "--cpu"]) == 1  # fmt: skip
    assert "latents from" not in caplog.text and not (tmp_path / "none").exists()
    out = tmp_path / "sevens"
    assert main(["generate", "--model", str(run), "--nsamples", "4", "--class", "7",
                 "--outdir", str(out), "--quiet", "--cpu"]) == 0  # fmt: skip
    prior.use_model(load_model(run))  # each grid's round trip, as generate's
    model = load_model(run).inference_copy()
    sevens = torch.full((4,), 7)
    grids = prior.sample(4, torch.Generator().manual_seed(0), labels=sevens)
    want = (model.decode(grids, sevens) * 255).round().to(torch.uint8)[:, 0].numpy()
    from PIL import Image

    got = np.stack([np.asarray(Image.open(out / f"sample_{i:05d}.png")) for i in range(4)])
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    # interpolate --random draws the two ends of the class's grids
    assert main(["interpolate", "--model", str(run), "--random", "--class", "7", "--outdir",
                 str(tmp_path / "path"), *common]) == 0  # fmt: skip
    # --guidance and --temperature reach the prior: the files are its guided grids decoded
    guided = tmp_path / "guided"
    assert main(["generate", "--model", str(run), "--nsamples", "4", "--class", "7",
                 "--guidance", "2", "--temperature", "0.8", "--outdir", str(guided),
                 "--quiet", "--cpu"]) == 0  # fmt: skip
    prior.guidance, prior.temperature = 2.0, 0.8
    grids = prior.sample(4, torch.Generator().manual_seed(0), labels=sevens)
    want = (model.decode(grids, sevens) * 255).round().to(torch.uint8)[:, 0].numpy()
    got = np.stack([np.asarray(Image.open(guided / f"sample_{i:05d}.png")) for i in range(4)])
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_gaussian_sampler_kinds_and_float_codes_are_refused_for_a_vq_model_in_one_line(
    vq_run, tmp_path, capsys, caplog
):
    out = tmp_path / "out"
    assert main(["generate", "--model", str(vq_run), "--outdir", str(out), "--quiet",
                 "--sampler", "gmm"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "a gmm sampler does not apply to a model with a discrete latent; use --sampler " \
        "transformer" in err and err.count("\n") == 1  # fmt: skip
    assert not out.exists()
    with caplog.at_level("WARNING", logger="torch_vae"):  # its own prior: noise, said so
        assert main(["generate", "--model", str(vq_run), "--outdir", str(out), "--nsamples",
                     "2", "--sampler", "prior"]) == 0  # fmt: skip
    assert "its samples are noise; fit a prior over its code grids" in caplog.text
    model = load_model(vq_run)
    with pytest.raises(TorchVaeError, match=r"decodes code grids \(N, 8, 8\) of code indices"):
        model.decode(torch.randn(2, model.config.latent_dims))


def test_temperature_divides_the_transformer_s_logits():
    prior = fit_tiny(repeated_codes(50))
    prior.temperature = 0.5
    hot = prior.sample(30, torch.Generator().manual_seed(2))
    with torch.no_grad():  # the same network with its logits doubled, drawn at temperature 1
        prior.net.head.weight *= 2
        prior.net.head.bias *= 2
    prior.temperature = 1.0
    assert torch.equal(hot, prior.sample(30, torch.Generator().manual_seed(2)))


def noisy_class_grids(n=600):
    """Class c: half its grids repeat code c, the others one of codes 0-3 at random, so
    p(code c | c) = 0.625 where the classes together give each of the four 0.25."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(4, (n,), generator=g)
    other = torch.randint(4, (n,), generator=g)
    first = torch.where(torch.rand(n, generator=g) < 0.5, labels, other)
    return labels, first[:, None, None].expand(n, 3, 3).numpy().copy()


def test_guidance_draws_grids_more_clearly_of_their_class():
    labels, grids = noisy_class_grids()
    info = {"codebook_size": 8, "latent_dims": 4, "classes": 4}
    options = {**TINY_PRIOR, "hidden": 64, "steps": 300}
    prior = fit_prior(grids, "transformer", options, info, progress=False, labels=labels)
    want = torch.tensor([0, 1, 2, 3] * 50)

    def of_their_class(guidance):
        prior.guidance = guidance
        drawn = prior.sample(200, torch.Generator().manual_seed(1), labels=want)
        return (drawn == want[:, None, None]).flatten(1).all(1).float().mean()

    plain, guided = of_their_class(0.0), of_their_class(3.0)
    assert 0.45 < plain < 0.8, plain  # about 0.625, as fitted
    assert guided > 0.9, guided  # w = 3: 0.625**4 / 0.25**3 against 0.125**4 / 0.25**3
    # seeded like unguided drawing
    again = [prior.sample(8, torch.Generator().manual_seed(4), labels=want[:8]) for _ in "ab"]
    assert torch.equal(*again)


def test_guidance_of_classes_that_are_alike_changes_nothing():
    """Where every class gives the same codes, p(c | y) = p(c) and guided drawing is
    unguided drawing."""
    labels, grids = noisy_class_grids(60)
    info = {"codebook_size": 8, "latent_dims": 4, "classes": 4}
    prior = fit_prior(grids, "transformer", {**TINY_PRIOR, "steps": 3}, info, progress=False,
                      labels=labels)  # fmt: skip
    with torch.no_grad():  # every class's start token the same
        prior.net.embed.weight[9:] = prior.net.embed.weight[8]
    want = torch.tensor([0, 1, 2, 3] * 5)
    plain = prior.sample(20, torch.Generator().manual_seed(5), labels=want)
    prior.guidance = 3.0
    assert torch.equal(plain, prior.sample(20, torch.Generator().manual_seed(5), labels=want))


def test_temperature_guidance_and_round_trip_flags_are_refused_where_they_do_not_apply(
    vq_run, mnist_dir, tmp_path, capsys
):
    assert main(["fit-sampler", "--model", str(vq_run), "--sampler", "transformer",
                 "--steps", "3", "--nscore", "0", "--data_dir", str(mnist_dir),
                 "--quiet"]) == 0  # fmt: skip
    cases = {
        ("--guidance", "2"): "--guidance needs a class-conditional model's sampler",
        ("--temperature", "0.5", "--sampler", "prior"): "--temperature applies to a fitted "
        "transformer sampler, not to the model's own prior (uniform codes",
        ("--temperature", "0"): "--temperature must be a number from 0.05 to 10",
        ("--guidance", "-1"): "--guidance must be a number from 0 to 20",
        ("--round_trips", "11"): "--round_trips must be a whole number from 0 to 10",
        ("--round_trips", "0", "--sampler", "prior"): "--round_trips applies to a fitted "
        "transformer sampler, not to the model's own prior",
    }
    for flags, message in cases.items():
        out = tmp_path / "out"
        assert main(["generate", "--model", str(vq_run), "--outdir", str(out), "--quiet",
                     *flags]) != 0  # fmt: skip
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (flags, err)
        assert not out.exists()


def test_temperature_on_a_gaussian_model_says_it_is_for_a_vq_models_codes(
    train_tiny, tmp_path, capsys
):
    """The error told a Gaussian model's user to fit a transformer sampler, which such a model
    cannot take; it says the flag is for a discrete model's codes."""
    run = train_tiny(tmp_path / "run")
    out = tmp_path / "out"
    assert main(["generate", "--model", str(run), "--outdir", str(out), "--quiet",
                 "--temperature", "0.5"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "--temperature applies to a transformer sampler, which draws a discrete model's " in (
        err)  # fmt: skip
    assert "has a gaussian latent: leave --temperature out" in err and "fit one" not in err


# --- the pictures and the explorer on a discrete latent ----------------------------------


def test_the_latent_functions_take_code_grids_and_refuse_gaussian_pictures():
    from torch_vae.analysis import latent

    model = tiny_vq()
    with torch.no_grad():  # a few training passes set the codebook (restarts at batch vectors)
        for _ in range(3):
            model.train()(torch.rand(16, 1, 32, 32))
    model.eval()
    x = torch.rand(6, 1, 32, 32)
    codes = latent.encode_codes(model, x)
    want = model.encode(x)
    assert torch.equal(codes.indices, want.indices) and torch.equal(codes.z_e, want.z_e.float())
    assert torch.equal(latent.encode_mean(model, x), codes.z_q)  # a point mass on the codes
    recon = model.reconstruct(x)
    assert torch.allclose(latent.decode(model, codes.indices), recon, atol=1e-6)
    assert torch.allclose(latent.decode(model, codes.z_q), recon, atol=1e-6)
    with pytest.raises(TorchVaeError, match=r"index grids \(N, 8, 8\) or code vectors \(N, 3, "):
        latent.decode(model, torch.zeros(2, 3))
    with pytest.raises(TorchVaeError, match=r"must lie in 0\.\.15"):
        latent.decode(model, torch.full((1, 8, 8), 16))
    # the path between two images' code vectors, from a grid, vectors or an image
    path = latent.interpolate(model, codes.indices[0], x[1], steps=5)
    assert torch.allclose(path[0], recon[0], atol=1e-6)
    assert torch.allclose(path[-1], recon[1], atol=1e-6)
    middle = latent.decode(model, (codes.z_q[:1] + codes.z_q[1:2]) / 2)
    assert torch.allclose(path[2], middle[0], atol=1e-6)
    xy = latent.embed(model, x)
    center, directions, _ = latent.pca_basis(codes.z_e.flatten(1))
    assert torch.allclose(xy, (codes.z_e.flatten(1) - center) @ directions.T, atol=1e-5)
    refusals = {
        "traverse walks a Gaussian latent's dimensions": lambda: latent.traverse(
            model, codes.z_q[0], [0]
        ),
        "manifold decodes a grid over a Gaussian latent": lambda: latent.manifold(model, 3, x),
        "the KL of each dimension is a Gaussian latent's": lambda: latent.kl_per_dim(model, x),
        "slerp follows the sphere": lambda: latent.interpolate(model, x[0], x[1], 3, "slerp"),
    }
    for message, call in refusals.items():
        with pytest.raises(TorchVaeError, match=message) as err:
            call()
        assert "this vqvae model's latent is a grid of discrete codes" in str(err.value)


def test_traverse_manifold_and_slerp_refuse_a_vq_model_in_one_line(vq_run, mnist_dir, tmp_path,
                                                                   capsys):  # fmt: skip
    common = ["--model", str(vq_run), "--data_dir", str(mnist_dir), "--quiet"]
    cases = {
        "traverse": "traverse walks a Gaussian latent's dimensions; this vqvae model's latent "
        "is a grid of discrete codes: use interpolate or the explorer",
        "manifold": "manifold decodes a grid over a Gaussian latent; this vqvae model's latent "
        "is a grid of discrete codes: use interpolate or the explorer",
    }
    for command, message in cases.items():
        assert main([command, *common, "--outdir", str(tmp_path / command)]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not (tmp_path / command / f"{command}.png").exists()
    assert main(["interpolate", *common, "--method", "slerp", "--outdir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "--method slerp follows the sphere" in err and "use --method linear" in err
    assert err.count("\n") == 1


def test_interpolate_and_embed_draw_a_vq_model(vq_run, labelled, tmp_path, caplog, capsys):
    from PIL import Image

    from torch_vae.analysis import latent
    from torch_vae.data import load_split

    mnist_dir = labelled  # the tiny MNIST with its labels: embed colours the map
    common = ["--model", str(vq_run), "--data_dir", str(mnist_dir)]
    out = tmp_path / "pictures"
    assert main(["interpolate", *common, "--index", "0", "3", "--steps", "4", "--outdir",
                 str(out), "--quiet"]) == 0  # fmt: skip
    assert Image.open(out / "interpolate.png").size[0] > 4 * 32
    assert (out / "interpolate.gif").stat().st_size > 0
    assert main(["embed", *common, "--nimages", "40", "--outdir", str(out), "--quiet"]) == 0
    assert Image.open(out / "embed.png").size[0] > 100
    model = load_model(vq_run)
    images = load_split("mnist", "test", 32, mnist_dir, progress=False)[:4]
    path = latent.interpolate(model, images[0], images[3], steps=4)
    x = torch.from_numpy(np.array(images[[0, 3]])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        assert torch.allclose(path[[0, -1]], model.reconstruct(x), atol=1e-5)
    # --random: uniform code grids, with a warning, until a prior is fitted; then from it
    assert main(["interpolate", *common, "--random", "--outdir", str(tmp_path / "r")]) == 0
    assert "no fitted prior over its code grids: two uniform grids" in caplog.text
    assert main(["fit-sampler", *common, "--sampler", "transformer", "--steps", "2",
                 "--quiet"]) == 0  # fmt: skip
    with caplog.at_level("INFO", "torch_vae"):
        assert main(["interpolate", *common, "--random", "--outdir", str(tmp_path / "p")]) == 0
    assert "two code grids drawn from its transformer prior (seed 0)" in caplog.text
    # its ends make the default round trip (--round_trips as generate's)
    strips = {}
    for trips in ("0", "1"):
        out = tmp_path / f"p{trips}"
        assert main(["interpolate", *common, "--random", "--round_trips", trips, "--outdir",
                     str(out), "--quiet"]) == 0  # fmt: skip
        strips[trips] = (out / "interpolate.png").read_bytes()
    assert strips["1"] == (tmp_path / "p" / "interpolate.png").read_bytes() != strips["0"]
    capsys.readouterr()  # without --random there are no drawn grids: the error says so
    assert (
        main(["interpolate", *common, "--round_trips", "2", "--outdir", str(tmp_path / "n")]) == 1
    )
    err = capsys.readouterr().err.strip()
    assert err.endswith("discrete model's fitted prior; add --random") and "\n" not in err


def test_the_explorer_of_a_vq_run_samples_from_its_transformer_prior(vq_run, mnist_dir):
    import warnings

    from torch_vae.explorer.app import create_app
    from torch_vae.explorer.state import load_explorer

    with warnings.catch_warnings():  # Starlette suggests another HTTP client; httpx works
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    model = load_model(vq_run)
    ex = load_explorer(model, vq_run, "mnist", mnist_dir, 8, progress=False)
    assert ex.sampler is None and ex.grids.shape == (8, 8, 8)
    assert main(["fit-sampler", "--model", str(vq_run), "--sampler", "transformer", "--steps",
                 "2", "--data_dir", str(mnist_dir), "--quiet"]) == 0  # fmt: skip
    ex = load_explorer(model, vq_run, "mnist", mnist_dir, 8, progress=False)
    prior = load_sampler(vq_run, "transformer")
    prior.use_model(model)  # the explorer's draws make their round trip through the model
    assert ex.sampler is not None and ex.sampler.kind == "transformer"
    with TestClient(create_app(ex)) as client:
        info = client.get("/api/info").json()
        assert info["latent_kind"] == "discrete" and info["fitted_sampler"] is True
        got = client.post("/api/sample", json={"seed": 5}).json()
        assert got["z"] == prior.sample(1, torch.Generator().manual_seed(5)).flatten().tolist()
        grid = client.get("/api/images/2").json()["z"]
        assert (
            grid
            == model.encode(
                torch.from_numpy(np.array(ex.images[2:3])).permute(0, 3, 1, 2).float() / 255
            )
            .indices.flatten()
            .tolist()
        )


def test_the_explorer_of_a_conditional_vq_run_draws_grids_of_the_class_with_guidance(
    mnist_dir, labelled, tmp_path, capsys, monkeypatch
):
    from torch_vae.explorer.state import load_explorer
    from torch_vae.priors.base import set_drawing

    config = tmp_path / "flags.json"
    config.write_text(json.dumps({"arch": "vqvae", "image_size": 32, "max_filters": 16,
                                  "latent_dims": 4, "codebook_size": 16, "blocks": 1}))  # fmt: skip
    run, common = tmp_path / "run", ["--data_dir", str(mnist_dir), "--quiet", "--cpu"]
    assert main(["train", "--dataset", "mnist", "--conditional", "--config", str(config),
                 "--max_steps", "4", "--batchsize", "8", "--val_images", "4", "--run_dir",
                 str(run), *common]) == 0  # fmt: skip
    assert main(["fit-sampler", "--model", str(run), "--sampler", "transformer", "--steps", "5",
                 "--nscore", "4", *common]) == 0  # fmt: skip
    model, prior = load_model(run), load_sampler(run, "transformer")
    ex = load_explorer(model, run, "mnist", mnist_dir, 8, progress=False)
    y = torch.tensor([1, 4, 7])
    got = ex.sampler.sample(3, torch.Generator().manual_seed(5), y)
    drawn = prior.sample(3, torch.Generator().manual_seed(5), y)  # no model attached: as drawn
    with torch.no_grad():  # one round trip, each grid decoded and encoded as its class
        want = model.encode(model.decode(drawn, y), y).indices
    assert torch.equal(got, want) and not torch.equal(got, drawn)
    prior.use_model(model)
    # the class first (as generate draws it for the seed), then a grid of that class
    grid, label = ex.sample(5)
    assert label == int(model.labels(None, 1, torch.Generator().manual_seed(5))[0])
    want = prior.sample(1, torch.Generator().manual_seed(5), labels=torch.tensor([label]))
    assert torch.equal(grid, want)
    grid, label = ex.sample(5, 7)
    assert label == 7
    assert torch.equal(grid, prior.sample(1, torch.Generator().manual_seed(5), torch.tensor([7])))
    set_drawing(ex.sampler, run, temperature=0.8, guidance=2.0)  # explore's two flags
    prior.temperature, prior.guidance = 0.8, 2.0
    assert torch.equal(
        ex.sample(5, 7)[0], prior.sample(1, torch.Generator().manual_seed(5), torch.tensor([7]))
    )
    # the explore command refuses them in one line where no fitted prior takes them, before
    # it reads any image
    (run / "sampler-transformer.safetensors").unlink()

    def no_images(*a, **k):
        raise AssertionError("the test images were read")

    monkeypatch.setattr("torch_vae.explorer.state.load_split", no_images)
    assert main(["explore", "--model", str(run), "--port", "0", "--guidance", "2",
                 "--nimages", "8", *common]) == 1  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("torch-vae: error: --guidance applies to a fitted transformer")


def test_a_vq_run_s_epoch_picture_shows_reconstructions_only(vq_run):
    from PIL import Image

    from torch_vae.analysis.pictures import epoch_picture

    model = load_model(vq_run)
    x = torch.randint(256, (4, 32, 32, 1), dtype=torch.uint8)  # as many as the run validated on
    picture = epoch_picture(model, None, x, "cpu")
    with Image.open(vq_run / "images" / "epoch_001.png") as saved:
        assert saved.size == (picture.shape[1], picture.shape[0])
    # one row of 4 images beside their reconstructions (2 pixels of border above and below)
    # under its title, nothing above them: a Gaussian model's picture has its samples on top
    from torch_vae.io.png import with_title

    gaussian = VAE(model_class("dcgan").config_class.tiny(image_size=32)).eval()
    z = gaussian.prior_sample(32, torch.Generator().manual_seed(0))
    title = with_title(np.zeros((0, picture.shape[1], 1), np.uint8), "the title").shape[0]
    assert picture.shape[0] == title + 2 + 32 + 2 < epoch_picture(gaussian, z, x, "cpu").shape[0]
    assert picture[: title - 2].min() == 0  # written there


def test_evaluate_of_a_vq_model_says_its_nll_needs_no_samples_and_names_one_report(
    vq_run, mnist_dir, capsys
):
    common = ["evaluate", "--model", str(vq_run), "--nimages", "4", "--data_dir", str(mnist_dir)]
    for k in ("3", "5"):
        assert main([*common, "--iw_samples", k]) == 0
    out = capsys.readouterr().out
    assert "NLL bound at the code, nats (any K)" in out
    assert "importance samples" not in out and "z sampled" not in out
    reports = sorted(p.name for p in vq_run.glob("eval-*.json"))
    assert reports == ["eval-mnist-test-first4.json"]  # the same numbers: one report, not -iw3/-iw5
    nll = [float(line.split()[-1]) for line in out.splitlines() if "NLL bound at the code" in line]
    assert len(nll) == 2 and nll[0] == nll[1]


def test_sampling_a_vq_model_from_its_own_prior_warns_that_it_gives_noise(vq_run, mnist_dir):
    from torch_vae.priors import load_sampler

    model = load_model(vq_run)
    with pytest.warns(UserWarning, match="own prior is uniform over its codes: these samples"):
        assert model.sample(2).shape == (2, 1, 32, 32)
    assert main(["fit-sampler", "--model", str(vq_run), "--sampler", "transformer", "--steps",
                 "2", "--nscore", "0", "--data_dir", str(mnist_dir), "--quiet"]) == 0  # fmt: skip
    prior = load_sampler(vq_run)  # the way the warning gives, as written
    prior.use_model(model)
    assert model.decode(prior.sample(2)).shape == (2, 1, 32, 32)


def test_a_stale_transformer_sampler_gives_one_warning_that_says_samples_are_noise(
    vq_run, mnist_dir, tmp_path, caplog
):
    data = ["--data_dir", str(mnist_dir), "--quiet"]
    assert main(["fit-sampler", "--model", str(vq_run), "--sampler", "transformer", "--steps",
                 "2", *data]) == 0  # fmt: skip
    assert main(["train", "--resume", str(vq_run), "--max_steps", "8", *data]) == 0  # stale now
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="torch_vae"):
        assert main(["generate", "--model", str(vq_run), "--nsamples", "2", "--outdir",
                     str(tmp_path / "g"), "--quiet"]) == 0  # fmt: skip
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings  # not also "no fitted sampler"
    assert "the transformer sampler was fitted to other weights than these" in warnings[0]
    assert warnings[0].endswith("the model's own prior, uniform codes, whose samples are noise, "
                                "meanwhile")  # fmt: skip

"""layers.ConvTranspose2d: the same outputs and gradients as nn.ConvTranspose2d, through its own
CPU backward (bias gradient summed apart from the convolution's backward call, or zero before a
batch norm with batch statistics), and to one channel in fp32 as a matrix product (forward and
backward; PyTorch's own operation when traced); layers.linears_of_chw and linear_to_chw: linear
layers to and from (C, H, W) feature maps that keep the channels_last format without copying the
batch."""

import pytest
import torch
from torch import nn

from torch_vae.models import VAE, ModelConfig, layers
from torch_vae.models.layers import (
    ConvTranspose2d,
    linear_to_chw,
    linears_of_chw,
    uses_batch_statistics,
)


def _pair(bias: bool, out_channels: int = 4, **geometry):
    torch.manual_seed(0)
    ours = ConvTranspose2d(6, out_channels, bias=bias, **geometry)
    ref = nn.ConvTranspose2d(6, out_channels, bias=bias, **geometry)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _grads(layer, x, autocast: bool):
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    y.float().square().sum().backward()
    grads = [x.grad] + [p.grad for p in layer.parameters()]
    return y, grads


GEOMETRIES = [
    dict(kernel_size=3, stride=2, padding=1, output_padding=1),  # the original's decoder
    dict(kernel_size=4, stride=2, padding=1),  # the DCGAN decoder
    dict(kernel_size=4),  # DCGAN's first layer, from 1x1
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("autocast", [False, True])
def test_transposed_conv_matches_pytorch_outputs_and_gradients(geometry, autocast):
    ours, ref = _pair(True, **geometry)
    x = torch.randn(3, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    y1, g1 = _grads(ours, x, autocast)
    y2, g2 = _grads(ref, x, autocast)
    assert y1.dtype == y2.dtype == (torch.bfloat16 if autocast else torch.float32)
    assert "_TransposedConv" in type(y1.grad_fn).__name__  # the faster backward ran
    torch.testing.assert_close(y1, y2)
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g2, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("autocast", [False, True])
def test_transposed_conv_before_a_training_batch_norm_gives_its_bias_a_zero_gradient(autocast):
    ours, ref = _pair(True, **GEOMETRIES[0])
    norm = nn.BatchNorm2d(4).train()
    x = torch.randn(3, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    grads = []
    for layer, follows in ((ours, True), (ref, False)):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            h = layer(xi, batch_norm_follows=True) if follows else layer(xi)
            y = norm(h)
        (y.float().square() * torch.arange(y.numel()).view_as(y)).sum().backward()
        grads.append([xi.grad, layer.weight.grad, layer.bias.grad])
    (gx, gw, gb), (gx_ref, gw_ref, gb_ref) = grads
    assert torch.equal(gb, torch.zeros(4))
    assert torch.equal(gx, gx_ref) and torch.equal(gw, gw_ref)  # the same computation
    assert gx.dtype == x.dtype and gb.dtype == torch.float32
    # the true gradient is zero (the norm removes the batch mean): in float64 PyTorch's own sum
    # is zero up to rounding, while the weight's gradient is not
    ref, norm, xd = ref.double(), norm.double(), x.double().requires_grad_(True)
    ref.zero_grad()
    (norm(ref(xd)).square() * torch.arange(y.numel()).view_as(y)).sum().backward()
    assert ref.bias.grad.abs().max() < 1e-9 * ref.weight.grad.abs().max()


ONE_CHANNEL_GEOMETRIES = [
    *GEOMETRIES,
    dict(kernel_size=3, stride=1),
    dict(kernel_size=5, stride=3, padding=2, output_padding=2),
    dict(kernel_size=(3, 4), stride=(2, 1), padding=(1, 2)),
]


@pytest.mark.parametrize("geometry", ONE_CHANNEL_GEOMETRIES)
@pytest.mark.parametrize("bias", [True, False])
def test_gemm_transposed_conv_gives_pytorchs_outputs_and_gradients(geometry, bias):
    ours, ref = _pair(bias, 1, **geometry)
    x = torch.randn(3, 6, 5, 7).contiguous(memory_format=torch.channels_last)
    args = (ours.weight, ours.bias, ours.stride, ours.padding, ours.output_padding)
    xg = x.clone().requires_grad_(True)
    y1 = layers._GemmTransposedConv.apply(xg, *args)
    y1.square().sum().backward()
    g1 = [xg.grad] + [p.grad for p in ours.parameters()]
    y2, g2 = _grads(ref, x, autocast=False)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(layers._gemm_transposed_conv(x, *args), ref(x))


def test_one_channel_3x3_stride_2_transposed_conv_in_fp32_takes_the_gemm_path_forward_too():
    ours, ref = _pair(True, 1, **GEOMETRIES[0])  # the original architecture's last layer
    x = torch.randn(3, 6, 5, 7).contiguous(memory_format=torch.channels_last)
    y1, g1 = _grads(ours, x, autocast=False)
    y2, g2 = _grads(ref, x, autocast=False)
    assert type(y1.grad_fn).__name__ == "_GemmTransposedConvBackward"
    for a, b in zip([y1, *g1], [y2, *g2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    called = []
    real = layers._gemm_transposed_conv
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(layers, "_gemm_transposed_conv", lambda *a: called.append(1) or real(*a))
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    assert called == [1]
    dcgan, _ = _pair(True, 1, **GEOMETRIES[1])  # 4x4: no gain measured
    assert "Gemm" not in type(dcgan(x).grad_fn).__name__


@pytest.mark.parametrize("needs", [(True, False), (False, True), (False, False)])
def test_gemm_transposed_conv_gives_only_the_gradients_asked_for(needs):
    ours, ref = _pair(True, 1, **GEOMETRIES[0])
    x = torch.randn(1, 6, 4, 3).contiguous(memory_format=torch.channels_last)  # batch 1
    grads = []
    for layer in (ours, ref):
        layer.weight.requires_grad_(needs[1])
        xi = x.clone().requires_grad_(needs[0])
        layer(xi).square().sum().backward()
        grads.append([xi.grad, layer.weight.grad, layer.bias.grad])
    assert [g is None for g in grads[0]] == [not needs[0], not needs[1], False]
    for a, b in zip(*grads, strict=True):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "geometry", [dict(kernel_size=3, stride=1), dict(kernel_size=3, stride=2, dilation=2)]
)
def test_one_channel_transposed_conv_of_other_geometries_keeps_onednn(geometry):
    ours, _ = _pair(True, 1, **geometry)
    x = torch.randn(3, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    assert "Gemm" not in type(ours(x).grad_fn).__name__


def test_one_channel_transposed_conv_keeps_onednn_while_compiled(monkeypatch):
    ours, _ = _pair(True, 1, **GEOMETRIES[0])
    x = torch.randn(3, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    assert "Gemm" in type(ours(x).grad_fn).__name__
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert "Gemm" not in type(ours(x).grad_fn).__name__


def test_one_channel_transposed_conv_keeps_onednn_under_autocast_in_nchw_and_when_traced():
    ours, ref = _pair(True, 1, **GEOMETRIES[0])
    x = torch.randn(3, 6, 5, 5)
    assert "Gemm" not in type(ours(x).grad_fn).__name__  # NCHW
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "Gemm" not in type(ours(x).grad_fn).__name__
    assert "Gemm" not in type(ours.double()(x.double()).grad_fn).__name__
    ours.float()
    with torch.no_grad():
        traced = torch.jit.trace(ours, x)
    assert "aten::_convolution" in str(traced.graph)
    assert "aten::matmul" not in str(traced.graph)
    torch.testing.assert_close(traced(x), ref(x), rtol=1e-5, atol=1e-5)


def test_uses_batch_statistics_only_for_batch_norms_normalising_with_the_batch():
    norm = nn.BatchNorm2d(3)
    assert uses_batch_statistics(norm.train()) and not uses_batch_statistics(norm.eval())
    assert uses_batch_statistics(nn.BatchNorm2d(3, track_running_stats=False).eval())
    assert not uses_batch_statistics(nn.Identity()) and not uses_batch_statistics(
        nn.GroupNorm(1, 3)
    )


def test_original_decoder_sums_the_bias_gradient_when_its_norms_use_running_statistics():
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_dims=2, arch="original", image_size=32))
    z = torch.randn(4, 2)
    for training, zero in ((True, True), (False, False)):
        model.zero_grad()
        model.decoder.train(training)
        model.decoder(z).square().sum().backward()
        bias_grad = model.decoder.convs[0].bias.grad
        assert torch.equal(bias_grad, torch.zeros_like(bias_grad)) == zero


def test_transposed_conv_takes_pytorchs_path_without_bias_or_gradients():
    ours, _ = _pair(False, kernel_size=3)
    y = ours(torch.randn(1, 6, 4, 4))
    assert "_TransposedConv" not in type(y.grad_fn).__name__
    ours, _ = _pair(True, kernel_size=3)
    with torch.no_grad():
        assert ours(torch.randn(1, 6, 4, 4)).grad_fn is None


def test_model_parameters_keep_their_names_with_the_faster_layer():
    names = set(VAE(ModelConfig(latent_dims=2)).state_dict())
    assert {"decoder.convs.0.weight", "decoder.convs.0.bias", "decoder.convs.2.bias"} <= names


def test_linears_of_chw_match_each_layer_on_the_flattened_features_in_either_layout():
    torch.manual_seed(0)
    first, second = nn.Linear(4 * 5 * 5, 3), nn.Linear(4 * 5 * 5, 2)
    x = torch.randn(6, 4, 5, 5)
    ref_x = x.clone().requires_grad_(True)
    ref = (first(ref_x.flatten(1)), second(ref_x.flatten(1)))
    (ref[0].square().sum() + ref[1].sin().sum()).backward()
    ref_grads = [ref_x.grad, *(p.grad.clone() for p in (*first.parameters(), *second.parameters()))]
    for layout in (torch.contiguous_format, torch.channels_last):
        first.zero_grad(), second.zero_grad()
        xi = x.clone().contiguous(memory_format=layout).requires_grad_(True)
        y = linears_of_chw(xi, first, second)
        assert [t.shape for t in y] == [(6, 3), (6, 2)]
        (y[0].square().sum() + y[1].sin().sum()).backward()
        torch.testing.assert_close(y, ref)  # the same sums, in another order
        grads = [xi.grad, *(p.grad for p in (*first.parameters(), *second.parameters()))]
        torch.testing.assert_close(grads, ref_grads)
        if layout == torch.channels_last:  # the gradient keeps the activations' format
            assert xi.grad.is_contiguous(memory_format=layout) and not xi.grad.is_contiguous()


def test_linears_of_chw_refuse_a_mix_of_layers_with_and_without_bias():
    with pytest.raises(ValueError, match="every layer has a bias or none"):
        linears_of_chw(torch.randn(2, 1, 2, 2), nn.Linear(4, 1), nn.Linear(4, 1, bias=False))


def test_linear_to_chw_gives_the_same_numbers_channels_last_on_the_cpu():
    torch.manual_seed(0)
    linear = nn.Linear(3, 4 * 5 * 5)
    z = torch.randn(6, 3, requires_grad=True)
    y = linear_to_chw(z, linear, (4, 5, 5))
    ref = linear(z).view(-1, 4, 5, 5)
    assert torch.equal(y, ref)  # each output is the same sum as before
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    weights = torch.randn_like(ref)
    (g,) = torch.autograd.grad((y * weights).sum(), z)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), z)
    torch.testing.assert_close(g, g_ref)


def _nodes(fn, seen):
    if fn is not None and fn not in seen:
        seen.add(fn)
        for next_fn, _ in fn.next_functions:
            _nodes(next_fn, seen)
    return seen


def test_original_model_sends_channels_last_gradients_into_every_activation():
    model = VAE(ModelConfig(latent_dims=2, arch="original", image_size=32))  # depth 2
    model = model.to(memory_format=torch.channels_last).train()
    x = torch.rand(4, 1, 32, 32)
    loss = model.objective(model(x), x)["loss"]
    grads = []
    for node in _nodes(loss.grad_fn, set()):
        if type(node).__name__.startswith("LeakyReluBackward"):
            node.register_prehook(lambda grad_outputs: grads.append(grad_outputs[0]))
    loss.backward()
    assert len(grads) == len(model.encoder.norms) + len(model.decoder.norms) == 3
    for g in grads:
        assert g.is_contiguous(memory_format=torch.channels_last) and not g.is_contiguous()

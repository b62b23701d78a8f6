"""Layers that compute the same thing as PyTorch's own, faster where PyTorch's path is slow.

``ConvTranspose2d``: on the CPU, oneDNN computes a transposed convolution's weight gradient
2.5-4x slower when it also computes the bias gradient in the same call (bf16 on AMX, batch 128:
8.6 ms against 3.3 ms for the original architecture's first decoder layer; ``python
bench/profile_train.py --onednn 10`` shows each oneDNN primitive's time). Training on the CPU
therefore asks for the weight and input gradients without the bias and sums the output
gradient for the bias itself. The results are the same numbers (the sum is over the same
terms); the parameters, their names and the forward pass are unchanged, so weights load as
before. Where a batch norm that normalises with the batch's own statistics follows the layer
(``batch_norm_follows``), the bias gradient is exactly zero (the norm subtracts the batch's
mean, bias included), and it is given as zeros instead of a sum of the gradient's rounding
errors (0.4-0.9 ms a step of the original architecture's 60 at batch 128 in bf16).

A transposed convolution to one channel (the families' last layer on grayscale images) is,
in fp32 on the CPU, slow in oneDNN: 10-18 ms forward and 5-7 ms backward for the original
architecture's last layer at batch 128 (32 channels, 32x32 to 64x64) on an AVX-512 Xeon
without bf16, against 3.6-4.3 and 5.1-5.6 ms as one matrix product with the (C, k*k) weight
and k*k strided sums into the output (``_gemm_transposed_conv``); a whole training step 153
against 161 ms (``python bench/last_layer.py``). Such a layer in fp32 with channels_last
inputs takes that path, forward and backward, with a 3x3 kernel at stride 2 (the DCGAN family's
4x4 one: no gain); the same sums in another order.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast casts to on ``device_type``, or None where it is off."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # PyTorch < 2.4: no device argument
        enabled = device_type == "cpu" and torch.is_autocast_cpu_enabled()
        return torch.get_autocast_cpu_dtype() if enabled else None
    return torch.get_autocast_dtype(device_type) if enabled else None


class _TransposedConv(torch.autograd.Function):
    """conv_transpose2d whose backward leaves the bias out of the convolution's backward call."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, output_padding, groups, dilation, zero_bias):
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation, output_padding, groups)
        ctx.zero_bias = zero_bias
        return F.conv_transpose2d(
            x, weight, bias, stride, padding, output_padding, groups, dilation
        )

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, output_padding, groups = ctx.geometry
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, stride, padding, dilation, True, output_padding, groups,
            (need_x, need_w, False),
        )  # fmt: skip
        grad_b = None
        if need_b:  # the bias's shape and dtype: the output's channels, in the gradient's dtype
            grad_b = grad.new_zeros(grad.shape[1]) if ctx.zero_bias else grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


def _gemm_transposed_conv(x, weight, bias, stride, padding, output_padding) -> torch.Tensor:
    """conv_transpose2d (groups 1, dilation 1) of a channels_last ``x`` as a matrix product:
    each input pixel's C features times the (C, k*k*O) weight give its k*k output taps, which
    are summed into the output at stride s (``_GemmTransposedConv`` is its gradient)."""
    n, c, h, w = x.shape
    out_c, (kh, kw) = weight.shape[1], weight.shape[2:]
    (sh, sw), (ph, pw) = stride, padding
    oh = (h - 1) * sh - 2 * ph + kh + output_padding[0]
    ow = (w - 1) * sw - 2 * pw + kw + output_padding[1]
    taps = (_pixels(x) @ _taps_weight(weight)).view(n, h, w, kh, kw, out_c)
    frame = _full_frame(x, out_c, (h, w), (kh, kw), stride, (ph + oh, pw + ow))
    for i, j in _taps((kh, kw)):
        frame[_strided(i, j, (h, w), stride)] += taps[:, :, :, i, j]
    out = frame[:, ph : ph + oh, pw : pw + ow]
    out = out.contiguous() if bias is None else out + bias  # dense: (N, OH, OW, O)
    return out.permute(0, 3, 1, 2)  # (N, O, OH, OW), channels_last


class _GemmTransposedConv(torch.autograd.Function):
    """``_gemm_transposed_conv`` with its gradient: the output gradient gathered at the taps'
    strided places (an im2col of the gradient), then two matrix products."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, output_padding):
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding)
        return _gemm_transposed_conv(x, weight, bias, stride, padding, output_padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        (sh, sw), (ph, pw) = ctx.geometry
        (n, c, h, w), (out_c, kh, kw) = x.shape, weight.shape[1:]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        g = grad.permute(0, 2, 3, 1)  # (N, OH, OW, O)
        oh, ow = g.shape[1:3]
        frame = _full_frame(g, out_c, (h, w), (kh, kw), (sh, sw), (ph + oh, pw + ow))
        frame[:, ph : ph + oh, pw : pw + ow] = g
        cols = g.new_empty(n, h, w, kh, kw, out_c)
        for i, j in _taps((kh, kw)):
            cols[:, :, :, i, j] = frame[_strided(i, j, (h, w), (sh, sw))]
        cols = cols.view(n * h * w, -1)
        w2 = _taps_weight(weight)
        grad_x = (cols @ w2.t()).view(n, h, w, c).permute(0, 3, 1, 2) if need_x else None
        grad_w = None
        if need_w:  # (cols^T x)^T: 1.7 against 3.9 ms as x^T cols (MKL, 131,072 pixels)
            grad_w = (cols.t() @ _pixels(x)).t().reshape(c, kh, kw, out_c).permute(0, 3, 1, 2)
        grad_b = g.sum((0, 1, 2)) if need_b else None
        return grad_x, grad_w, grad_b, None, None, None


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """A channels_last (N, C, H, W) as its (N*H*W, C) matrix of pixels: a view."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _taps_weight(weight: torch.Tensor) -> torch.Tensor:
    """A transposed convolution's (C, O, kh, kw) weight as (C, kh*kw*O), taps in (kh, kw, O)
    order."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _taps(kernel: tuple[int, int]):
    return ((i, j) for i in range(kernel[0]) for j in range(kernel[1]))


def _strided(i: int, j: int, size: tuple[int, int], stride: tuple[int, int]) -> tuple:
    """The (N, FH, FW, O) frame's places that tap (i, j) of each of the (h, w) input pixels
    reaches."""
    (h, w), (sh, sw) = size, stride
    return (slice(None), slice(i, i + (h - 1) * sh + 1, sh), slice(j, j + (w - 1) * sw + 1, sw))


def _full_frame(like, out_c, size, kernel, stride, needed) -> torch.Tensor:
    """Zeros (N, FH, FW, O) big enough for every tap of a transposed convolution (input
    ``size``, ``kernel``, ``stride``) and for the cropped output (``needed``: padding plus the
    output size, per dimension)."""
    (h, w), (kh, kw), (sh, sw) = size, kernel, stride
    fh = max((h - 1) * sh + kh, needed[0])
    fw = max((w - 1) * sw + kw, needed[1])
    return like.new_zeros(like.shape[0], fh, fw, out_c)


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with the faster CPU paths above: the backward without the bias
    when it has one, and the matrix product for one output channel in fp32."""

    def forward(
        self,
        x: torch.Tensor,
        output_size: list[int] | None = None,
        batch_norm_follows: bool = False,
    ) -> torch.Tensor:
        """``batch_norm_follows``: the output goes straight into a batch norm that normalises
        with the batch's statistics (``uses_batch_statistics``), so the bias's gradient is 0."""
        if output_size is None and self._gemm_path(x):
            geometry = (self.stride, self.padding, self.output_padding)
            if torch.is_grad_enabled():
                return _GemmTransposedConv.apply(x, self.weight, self.bias, *geometry)
            return _gemm_transposed_conv(x, self.weight, self.bias, *geometry)
        plain = (
            self.bias is None
            or output_size is not None
            or x.device.type != "cpu"
            or not torch.is_grad_enabled()
            or self.padding_mode != "zeros"
        )
        if plain:
            return super().forward(x, output_size)
        args = (x, self.weight, self.bias)
        dtype = _autocast_dtype("cpu")
        if dtype is not None:  # what autocast does for conv_transpose2d, done before the call
            args = tuple(t.to(dtype) for t in args)
        with torch.autocast("cpu", enabled=False):
            geometry = (self.stride, self.padding, self.output_padding, self.groups, self.dilation)
            return _TransposedConv.apply(*args, *geometry, batch_norm_follows)

    def _gemm_path(self, x: torch.Tensor) -> bool:
        """Whether this layer runs as ``_gemm_transposed_conv``: one output channel, a 3x3
        kernel at stride 2, on the CPU in fp32 (autocast off), channels_last input, padding
        mode zeros, groups 1, dilation 1 (where it was measured faster: the DCGAN family's 4x4
        last layer made that family's step slower, 5 pairs of 5, and 3 output channels the
        layer), and not while tracing, scripting or compiling (the exporters see PyTorch's
        own operation)."""
        return (
            self.out_channels == 1
            and self.kernel_size == (3, 3)
            and self.stride == (2, 2)
            and self.groups == 1
            and self.dilation == (1, 1)
            and self.padding_mode == "zeros"
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and _autocast_dtype("cpu") is None
            and _is_channels_last(x)
            and not _tracing()
        )


def _tracing() -> bool:
    """Whether the model is being traced or scripted (TorchScript, ONNX export) or compiled."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or ("torch.onnx" in sys.modules and torch.onnx.is_in_onnx_export())  # else not loaded
        or torch.compiler.is_compiling()
    )


def uses_batch_statistics(norm: nn.Module) -> bool:
    """Whether ``norm`` normalises each channel with the batch's own mean (a batch norm in
    training mode, or one without running statistics): then the output does not depend on a
    per-channel bias added before it, and that bias's gradient is exactly zero."""
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
        return False
    return norm.training or norm.running_mean is None


def _is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` (B, C, H, W) is channels_last and not also contiguous (one channel is both)."""
    return (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def linears_of_chw(x: torch.Tensor, *linears: nn.Linear) -> tuple[torch.Tensor, ...]:
    """``linear(x.flatten(1))`` for each of ``linears``: linear layers whose inputs are the
    features of ``x`` (B, C, H, W) in (C, H, W) order, computed as one matrix product with
    their weights stacked (one pass over ``x`` forward, one gradient for it backward instead
    of a sum of several: the original architecture's two posterior projections, 1.6-1.8
    against 1.0 ms forward and backward in bf16 at batch 128). A channels_last ``x`` is read
    in its own (H, W, C) order, and the weights' columns are put in that order instead:
    flattening the activations in (C, H, W) order copied the batch and sent the gradient back
    in the other memory format, which PyTorch's CPU kernels take element by element (the
    original architecture's last leaky ReLU backward: 3 ms a step under torch.profiler,
    against 0.6 ms for a layer twice its size). The same parameters and results, up to the
    rounding of the sums' order."""
    biases = [lin.bias for lin in linears]
    if len({b is None for b in biases}) > 1:
        raise ValueError("linears_of_chw: either every layer has a bias or none has")
    weight = torch.cat([lin.weight for lin in linears])
    bias = None if biases[0] is None else torch.cat(biases)
    if _is_channels_last(x):
        b, c, h, w = x.shape
        weight = weight.view(-1, c, h, w).permute(0, 2, 3, 1).reshape(-1, c * h * w)
        out = F.linear(x.permute(0, 2, 3, 1).reshape(b, -1), weight, bias)
    else:
        out = F.linear(x.flatten(1), weight, bias)
    return out.split([lin.out_features for lin in linears], dim=1)


def linear_to_chw(z: torch.Tensor, linear: nn.Linear, shape: tuple[int, int, int]) -> torch.Tensor:
    """``linear(z).view(-1, *shape)``: a linear layer whose outputs are a (C, H, W) feature map
    in (C, H, W) order; on the CPU in channels_last memory (``cpu_channels_last``), made so
    directly: the weight's rows are put in (H, W, C) order, so that the output is that layout
    without a copy of the batch. The same outputs either way (each is the same sum); the gradient
    of ``z`` sums the same terms in another order."""
    c, h, w = shape
    if z.device.type != "cpu":
        return linear(z).view(-1, c, h, w)
    weight = linear.weight.view(c, h, w, -1).permute(1, 2, 0, 3).reshape(c * h * w, -1)
    bias = linear.bias
    if bias is not None:
        bias = bias.view(c, h, w).permute(1, 2, 0).reshape(-1)
    return F.linear(z, weight, bias).view(-1, h, w, c).permute(0, 3, 1, 2)


def cpu_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels_last memory on the CPU (several times faster for the families'
    convolutions there), as it is elsewhere."""
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x


def fold_ladders(*parts: nn.Module) -> None:
    """Fold each part's ``norms[i]`` into its ``convs[i]`` (``fold_batch_norms``): a ladder
    family's encoder and decoder."""
    for part in parts:
        fold_batch_norms(part.convs, part.norms)


def fold_batch_norms(convs: nn.ModuleList, norms: nn.ModuleList) -> None:
    """Fold each batch norm ``norms[i]`` (in eval mode) into the convolution ``convs[i]`` before
    it, in place: the same outputs up to float rounding, one pass over memory fewer. Entries of
    ``norms`` that are not BatchNorm2d (Identity) are left alone; the folded ones become
    Identity. Used by each family's ``fold_batch_norm`` for the pairs it knows it has."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for i, norm in enumerate(norms):
        if not isinstance(norm, nn.BatchNorm2d):
            continue
        conv = convs[i]
        # output channels: dim 0 of a Conv2d weight, dim 1 of a ConvTranspose2d weight
        transpose = isinstance(conv, nn.ConvTranspose2d)
        convs[i] = fuse_conv_bn_eval(conv, norm, transpose=transpose)
        norms[i] = nn.Identity()

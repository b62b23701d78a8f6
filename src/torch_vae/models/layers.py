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
"""

from __future__ import annotations

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


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with the faster CPU backward above when it has a bias."""

    def forward(
        self,
        x: torch.Tensor,
        output_size: list[int] | None = None,
        batch_norm_follows: bool = False,
    ) -> torch.Tensor:
        """``batch_norm_follows``: the output goes straight into a batch norm that normalises
        with the batch's statistics (``uses_batch_statistics``), so the bias's gradient is 0."""
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

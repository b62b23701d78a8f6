"""The optimizer and ``--compile``: AdamW (PyTorch's fused kernel) and torch.compile, with
one-line errors where compiling cannot work. ``maybe_compile(model, True)`` returns
``torch.compile(model)``; the weights stay shared with ``model``, and checkpoints written from
either have the same keys (no ``_orig_mod.``)."""

from __future__ import annotations

import importlib.util
import shutil

import torch

from ..errors import TorchVaeError


def make_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device
) -> torch.optim.Optimizer | CpuAdamW:
    """AdamW. For float32 weights on the CPU, ``CpuAdamW`` (PyTorch's fused AdamW kernel without
    torch.optim's start-up); elsewhere torch.optim's AdamW, fused where this PyTorch has a fused
    AdamW for ``device`` (CUDA from 2.0), else its default (foreach). All keep the same state,
    so a checkpoint resumes with any of them."""
    params = list(model.parameters())
    if CpuAdamW.supports(params):
        return CpuAdamW(params, lr=lr, weight_decay=weight_decay)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


class CpuAdamW:
    """AdamW for float32 parameters on the CPU: each step is one call of the fused kernel that
    ``torch.optim.AdamW(fused=True)`` runs (``torch._fused_adamw_``, after adding 1 to every
    parameter's step count), so the updates are the same numbers. torch.optim's Optimizer
    imports torch._dynamo when it is built and on its first step, 1.3 s of every training
    command on a 2-core CPU; this class does not. ``state_dict`` and ``load_state_dict`` use
    torch.optim.AdamW's format, so checkpoints move between the two. One parameter group;
    ``param_groups[0]["lr"]`` may be set before any step, as the training loop does."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 1e-2,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):  # fmt: skip
        params = list(params)
        if not self.supports(params):
            raise ValueError("CpuAdamW takes float32 parameters on the CPU")
        # the keys and defaults of torch.optim.AdamW(fused=True)'s group, for its state_dict
        self.param_groups = [{
            "params": params, "lr": lr, "betas": tuple(betas), "eps": eps,
            "weight_decay": weight_decay, "amsgrad": False, "foreach": None, "maximize": False,
            "capturable": False, "differentiable": False, "fused": True,
            "decoupled_weight_decay": True,
        }]  # fmt: skip
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    @staticmethod
    def supports(params: list[torch.Tensor]) -> bool:
        """Whether every parameter is a float32 tensor on the CPU (and there is one)."""
        return bool(params) and all(
            p.device.type == "cpu" and p.dtype == torch.float32 for p in params
        )

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        for p in params:
            if p not in self.state:
                self.state[p] = {
                    "step": torch.tensor(0.0),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
        states = [self.state[p] for p in params]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        beta1, beta2 = group["betas"]
        torch._fused_adamw_(
            params, [p.grad for p in params], [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states], [], steps, lr=float(group["lr"]), beta1=beta1,
            beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=False,
            maximize=False,
        )  # fmt: skip

    def state_dict(self) -> dict:
        """torch.optim.AdamW's layout: the state by parameter index, the group with indices."""
        params = self.param_groups[0]["params"]
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        group["params"] = list(range(len(params)))
        state = {i: dict(self.state[p]) for i, p in enumerate(params) if p in self.state}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, saved: dict) -> None:
        """Load ``state_dict``'s (or torch.optim.AdamW's) layout; ValueError if it does not fit:
        another number of groups or parameters, or a state tensor of another shape."""
        params = self.param_groups[0]["params"]
        groups, state = saved["param_groups"], saved["state"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(params):
            raise ValueError("the saved optimizer has other parameter groups than this model")
        if groups[0].get("amsgrad") or groups[0].get("maximize"):
            raise ValueError("the saved optimizer uses amsgrad or maximize, which CpuAdamW lacks")
        loaded = {}
        for index, p in zip(groups[0]["params"], params, strict=True):
            if index not in state:
                continue
            entry = state[index]
            step = torch.as_tensor(entry["step"], dtype=torch.float32).reshape(())
            moments = {k: entry[k] for k in ("exp_avg", "exp_avg_sq")}
            if any(not isinstance(t, torch.Tensor) or t.shape != p.shape
                   for t in moments.values()):  # fmt: skip
                raise ValueError(f"the saved optimizer state of parameter {index} is misshapen")
            loaded[p] = {"step": step.clone(), **{k: t.to(p).clone() for k, t in moments.items()}}
        keep = ("lr", "betas", "eps", "weight_decay")
        self.param_groups[0].update({k: groups[0][k] for k in keep if k in groups[0]})
        self.param_groups[0]["betas"] = tuple(self.param_groups[0]["betas"])
        self.state = loaded


def maybe_compile(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile(model)`` if ``enabled`` (else ``model``); a clear error if it cannot
    work here. Compilation happens lazily, on the first forward pass."""
    if not enabled:
        return model
    check_compile(next(model.parameters()).device)
    return torch.compile(model)


def check_compile(device: torch.device) -> None:
    """A one-line error, before training starts, where torch.compile cannot work on ``device``:
    its default backend builds C++ for the CPU, and Triton kernels for CUDA GPUs."""
    if not hasattr(torch, "compile"):
        raise TorchVaeError("--compile needs PyTorch >= 2.0; upgrade PyTorch or drop --compile")
    if device.type == "cpu" and not any(shutil.which(cc) for cc in ("cc", "gcc", "clang", "g++")):
        raise TorchVaeError(
            "--compile on the CPU needs a C/C++ compiler (gcc or clang) on the PATH; "
            "install one or drop --compile"
        )
    if device.type == "cuda" and not has_triton():
        raise TorchVaeError(
            "--compile on CUDA needs Triton (pip install triton, or a PyTorch build that ships "
            "it; it also needs a GPU of compute capability 7.0 or newer); or drop --compile"
        )


def has_triton() -> bool:
    """Whether torch.compile can generate GPU kernels with Triton here."""
    try:
        from torch.utils._triton import has_triton as torch_has_triton  # PyTorch >= 2.2
    except ImportError:
        return importlib.util.find_spec("triton") is not None
    return torch_has_triton()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under a ``torch.compile`` wrapper (or ``model`` itself)."""
    return getattr(model, "_orig_mod", model)

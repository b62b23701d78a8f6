"""A run's resumable training state, ckpt.pt, read and written safely.

``ckpt.pt`` holds everything needed to continue a run exactly where it stopped: the model's
weights, the optimizer state, the fp16 loss scaler's state (training in fp16 on CUDA), the
random number generators (PyTorch's, the batch-order generator's, and CUDA's or MPS's), the
epoch and step, and, for a run stopped by a signal in the middle of an epoch, that epoch's
batch order and progress (files written before the scaler and MPS states were saved read as
before). It is written atomically, last of all the files of an epoch, so it always describes
one consistent moment. It is read with ``torch.load(weights_only=True)``: tensors and plain
data only, so loading it never runs code.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import TorchVaeError, first_line
from ..io.files import atomic_path
from ..io.weights import CONFIG_NAME, STATE_NAME, WEIGHTS_NAME, epoch_checkpoint_files
from ..models import ModelConfig
from ..version import __version__

STATE_FORMAT = "torch-vae-train-state"
STATE_VERSION = 1
TOTAL_KEYS = ("loss", "recon", "kl")  # a Gaussian-latent model's; a family names its own


@dataclass
class EpochProgress:
    """How far an epoch got: its batch order, the batches done, the images seen, the seconds
    spent and the running sums of the per-image losses (by name: "loss" and the model's
    ``objective_terms``, ``TOTAL_KEYS`` unless given). Saved in ckpt.pt when
    a signal stops training in the middle of an epoch, so that resuming continues it."""

    perm: torch.Tensor  # (N,) int64, the epoch's batch order
    batch: int = 0
    seen: int = 0
    seconds: float = 0.0
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TOTAL_KEYS, 0.0))

    def to_state(self) -> dict[str, Any]:
        """Plain data for ckpt.pt (read back with weights_only=True)."""
        return {"perm": self.perm, "batch": self.batch, "totals": dict(self.totals),
                "seen": self.seen, "seconds": float(self.seconds)}  # fmt: skip

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochProgress:
        return cls(state["perm"], state["batch"], state["seen"], state["seconds"],
                   dict(state["totals"]))  # fmt: skip


def all_finite(model: torch.nn.Module) -> bool:
    return all(
        bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point()
    )


def rng_states(gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    cuda = []
    if device.type == "cuda" and torch.cuda.is_available():
        cuda = torch.cuda.get_rng_state_all()
    states = {"torch": torch.get_rng_state(), "gen": gen.get_state(), "cuda": cuda}
    if device.type == "mps":
        states["mps"] = torch.mps.get_rng_state()
    return states


def save_train_state(
    run_dir: Path,
    *,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    device: torch.device,
    epoch: int,
    step: int,
    n_train: int,
    partial: EpochProgress | None = None,
    scaler: Any = None,
    evaluated: bool = True,
    processes: int = 1,
) -> None:
    """Write ckpt.pt atomically. ``epoch`` is the number of completed epochs; ``partial``
    describes progress in the next one (for a run stopped mid-epoch); ``scaler``: the
    GradScaler of fp16 training, if any (its scale and growth counter); ``evaluated``: whether
    the end of the step reached (evaluation, weights, metrics) was saved too, False for a run
    stopped before that (a resume then does it even when no step is left to train);
    ``processes``: of the job that trained it."""
    config = getattr(model, "config", None)
    state = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "torch_vae_version": __version__,
        "model_config": config.to_dict() if config is not None else None,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(),
        "rng": rng_states(gen, device),
        "epoch": epoch,
        "step": step,
        "n_train": n_train,
        "partial": partial.to_state() if partial is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "evaluated": evaluated,
        "threads": torch.get_num_threads(),  # a resume with as many gives the same numbers
        "processes": processes,  # and as many processes
    }
    state["digest"] = state_digest(state)
    with atomic_path(run_dir / STATE_NAME) as tmp:
        torch.save(state, tmp)


def state_digest(state: dict[str, Any]) -> str:
    """SHA-256 of everything in a training state but its "digest": each tensor's dtype, shape
    and bytes and each other value's type and repr, in the state's own order. torch.load does
    not check the zip records' CRCs, so bytes damaged inside a tensor would otherwise load as
    other numbers (8 ms for the original architecture's 390,673 weights and their AdamW
    moments on a 2-core Xeon)."""
    h = hashlib.sha256()

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(value.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for key, item in value.items():
                h.update(f"K{key!r}".encode())
                walk(item)
        elif isinstance(value, list | tuple):
            h.update(f"L{len(value)}".encode())
            for item in value:
                walk(item)
        else:
            h.update(f"V{type(value).__name__}{value!r}".encode())

    walk({key: value for key, value in state.items() if key != "digest"})
    return h.hexdigest()


def _refused_global(message: str) -> str | None:
    # "GLOBAL posix.system" (PyTorch >= 2.4), "Unsupported class posix.system" (earlier)
    found = re.search(r"(?:GLOBAL|Unsupported class) (\S+)", message)
    return found.group(1) if found else None


def load_train_state(run_dir: Path) -> dict[str, Any]:
    """Read and check ckpt.pt; never runs code from the file."""
    path = run_dir / STATE_NAME
    if not path.is_file():
        weights = run_dir / WEIGHTS_NAME
        if weights.is_file():  # weights are saved before the state: the state's save failed
            why = ("it is a model folder, or its run's state failed to save (a full disk) or was "
                   "removed")  # fmt: skip
            fix = f"start a new run from its weights: {new_run_command(run_dir, weights)}"
        else:
            why = "its run never finished an epoch nor saved on an interrupt"
            fix = f"start it anew there: torch-vae train --run_dir {run_dir} with its flags"
        raise TorchVaeError(
            f"{run_dir} has no training state ({STATE_NAME}): {why}; nothing to resume: {fix}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        name = _refused_global(str(exc))
        if name:
            raise TorchVaeError(
                f"refusing to load {path}: it contains a Python object ({name}) that is not a "
                "tensor or plain data, and loading it could run code; torch-vae reads training "
                "state only with weights_only=True (was the file written by torch-vae?)"
            ) from None
        raise _damaged(run_dir, path, exc) from None
    except Exception as exc:  # torch.load raises many kinds of errors for a damaged file
        raise _damaged(run_dir, path, exc) from None
    _check_state(path, state)
    if "digest" in state and state["digest"] != state_digest(state):  # earlier files: none
        raise _damaged(run_dir, path, ValueError("its contents do not match their checksum"))
    return state


def new_run_command(run_dir: Path, weights: Path, flags: str = "") -> str:
    """The command that starts a new run from ``weights`` with the flags of the run in
    ``run_dir`` (its config.json, which train's --config takes) and ``flags``, or without the
    run's where it has no readable run config."""
    from .rundir import read_run_config

    try:
        read_run_config(run_dir)
    except TorchVaeError:
        return f"torch-vae train --init_from {weights}{flags}"
    return (f"torch-vae train --config {run_dir / CONFIG_NAME} --init_from {weights}{flags} "
            "(the run's flags; --epochs for fewer epochs)")  # fmt: skip


def _start_anew(run_dir: Path) -> str:
    """How to start a new run in the stead of the run in ``run_dir``: from its weights, or
    from scratch where it finished no epoch."""
    weights = run_dir / WEIGHTS_NAME
    if weights.is_file():
        return f"start a new one from its weights: {new_run_command(run_dir, weights)}"
    return (f"it finished no epoch (no weights to start from): start a new one with "
            f"torch-vae train --config {run_dir / CONFIG_NAME}")  # fmt: skip


def _damaged(run_dir: Path, path: Path, exc: Exception) -> TorchVaeError:
    """The one-line error for an unreadable training state: what failed (the message in one
    line) and the run's newest weights to start a new run from, where it has any."""
    said = " ".join(str(exc).split())
    if said.startswith("Weights only load failed"):  # PyTorch's advice to load unsafely
        said = "it is not a file of tensors that loads without running code from it"
    said = said.split(". ", 1)[0]  # the first sentence: PyTorch's go on about its internals
    said = f"{type(exc).__name__}: {said[:150]}{'...' if len(said) > 150 else ''}"
    if path.is_file() and path.stat().st_size == 0:
        said = "an empty file"
    weights = epoch_checkpoint_files(run_dir)
    weights = weights[-1:] or [w for w in (run_dir / WEIGHTS_NAME,) if w.is_file()]
    fix = "start a new run"
    if weights:
        fix += f" from its newest weights: {new_run_command(run_dir, weights[0])}"
    return TorchVaeError(f"{path} is corrupt or truncated ({said}), so the run cannot resume; "
                         f"{fix}")  # fmt: skip


def _check_state(path: Path, state: Any) -> None:
    def bad(what: str) -> TorchVaeError:
        return TorchVaeError(f"{path} is not a valid torch-vae training state ({what})")

    if not isinstance(state, dict):
        raise bad(f"a {type(state).__name__}, not a dict")
    if state.get("format") != STATE_FORMAT:
        if "optimizer" in state and "model" not in state:
            raise TorchVaeError(
                f"{path} was written by an earlier torch-vae that did not save the weights and "
                "random states needed to resume; this run cannot be resumed (its weights are in "
                "model.safetensors)"
            )
        raise bad("no torch-vae format marker")
    version = state.get("version")
    if not is_count(version) or version > STATE_VERSION:
        raise TorchVaeError(
            f"{path} has training state format {version!r}, newer than this torch-vae reads; "
            "upgrade with pip install -U torch-vae"
        )
    for key in ("epoch", "step", "n_train"):
        if not is_count(state.get(key)):
            raise bad(f"{key} is not a count")
    model = state.get("model")
    if not isinstance(model, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()
    ):
        raise bad("model weights are not a dict of tensors")
    if not isinstance(state.get("model_config"), dict):
        raise bad("no model config")
    opt = state.get("optimizer")
    if not isinstance(opt, dict) or not isinstance(opt.get("param_groups"), list):
        raise bad("no optimizer state")
    rng = state.get("rng")
    if (
        not isinstance(rng, dict)
        or not _is_bytes_tensor(rng.get("torch"))
        or not _is_bytes_tensor(rng.get("gen"))
        or not isinstance(rng.get("cuda"), list)
        or not all(_is_bytes_tensor(t) for t in rng["cuda"])
        or not (rng.get("mps") is None or _is_bytes_tensor(rng["mps"]))
    ):
        raise bad("random generator states missing")
    if not _is_scaler_state(state.get("scaler")):  # absent in files of earlier versions
        raise bad("the fp16 loss scaler's state is damaged")
    partial = state.get("partial")
    if partial is not None and not _is_epoch_progress(partial):
        raise bad("the progress within the interrupted epoch is damaged")


def _is_epoch_progress(partial: Any) -> bool:
    """Whether ``partial`` is an ``EpochProgress.to_state()``: its counts, its batch order and
    its loss sums ("loss" and the model's terms, floats)."""
    return (
        isinstance(partial, dict)
        and is_count(partial.get("batch"))
        and is_count(partial.get("seen"))
        and isinstance(partial.get("seconds"), float)
        and isinstance(partial.get("perm"), torch.Tensor)
        and partial["perm"].dtype == torch.int64
        and partial["perm"].dim() == 1
        and isinstance(partial.get("totals"), dict)
        and "loss" in partial["totals"]
        and all(isinstance(v, float) for v in partial["totals"].values())
    )


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_bytes_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1


def _is_scaler_state(value: Any) -> bool:
    """None, or a GradScaler's state_dict: names to finite numbers (empty if it was disabled)."""
    if value is None:
        return True
    return isinstance(value, dict) and all(
        isinstance(k, str)
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
        for k, v in value.items()
    )


def restore_train_state(
    state: dict[str, Any],
    path: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    n_train: int,
    steps_per_epoch: int,
    scaler: Any = None,
) -> None:
    """Load a checked state into a freshly built model, optimizer, generators and fp16 loss
    ``scaler`` (if training uses one), with a one-line error when it does not fit them. A
    scaler starts afresh when the state has none (a run begun on another device)."""
    _check_fits(state, path, model, n_train, steps_per_epoch)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise TorchVaeError(
            f"{path}: the saved weights do not fit the model ({first_line(exc)})"
        ) from None
    if not all_finite(model):
        raise TorchVaeError(f"{path} holds non-finite weights; it is damaged")
    _load_optimizer(state["optimizer"], path, opt)
    if scaler is not None and state.get("scaler"):
        try:
            scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise TorchVaeError(
                f"{path}: the saved fp16 loss scaler state is damaged ({first_line(exc)})"
            ) from None
    _set_rng_states(state["rng"], gen, path)


def _set_rng_states(rng: dict[str, Any], gen: torch.Generator, path: Path) -> None:
    try:
        torch.set_rng_state(rng["torch"])
        gen.set_state(rng["gen"])
        if rng["cuda"] and torch.cuda.is_available():
            if len(rng["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(rng["cuda"])
        if rng.get("mps") is not None and torch.backends.mps.is_available():
            torch.mps.set_rng_state(rng["mps"])
    except (RuntimeError, ValueError, TypeError) as exc:
        raise TorchVaeError(
            f"{path}: the saved random generator states are damaged ({first_line(exc)})"
        ) from None


def _same_model(saved: Any, config: ModelConfig) -> bool:
    """Whether a checkpoint's model config (a dict, from any version: fields added since take
    their defaults) is ``config``."""
    try:
        return ModelConfig.from_dict(saved) == config
    except TorchVaeError:
        return False


def _check_fits(state, path: Path, model, n_train: int, steps_per_epoch: int) -> None:
    """The state belongs to this model and training split, and its partial epoch is sound."""
    config = getattr(model, "config", None)
    if config is not None and not _same_model(state["model_config"], config):
        raise TorchVaeError(
            f"{path} belongs to a different model than {CONFIG_NAME} describes "
            f"({state['model_config']} vs {config.to_dict()}); the run folder is inconsistent"
        )
    if state["n_train"] != n_train:
        raise TorchVaeError(
            f"the training split now has {n_train} images, but the run was trained on "
            f"{state['n_train']}; resuming would not continue the same run: "
            + _start_anew(path.parent)
        )
    partial = state["partial"]
    if partial is not None:
        perm = partial["perm"]
        if len(perm) != n_train or partial["batch"] > steps_per_epoch:
            raise TorchVaeError(f"{path}: the interrupted epoch's batch order is damaged")
        if not torch.equal(torch.sort(perm).values, torch.arange(n_train)):
            raise TorchVaeError(f"{path}: the interrupted epoch's batch order is damaged")
        if not all(math.isfinite(v) for v in partial["totals"].values()):
            raise TorchVaeError(f"{path}: the interrupted epoch's running losses are not finite")


def _load_optimizer(saved: dict[str, Any], path: Path, opt: torch.optim.Optimizer) -> None:
    settings = _group_settings(opt)
    try:
        opt.load_state_dict(saved)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise TorchVaeError(
            f"{path}: the saved optimizer state does not fit the model ({first_line(exc)})"
        ) from None
    if _group_settings(opt) != settings:
        raise TorchVaeError(
            f"{path}: the saved optimizer settings differ from those in {CONFIG_NAME}; "
            "the run folder is inconsistent"
        )
    for group in opt.param_groups:
        for p in group["params"]:
            for name, value in opt.state.get(p, {}).items():
                if not isinstance(value, torch.Tensor) or (
                    value.dim() > 0 and value.shape != p.shape
                ):
                    raise TorchVaeError(f"{path}: the saved optimizer state {name} is damaged")


def _group_settings(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """The optimizer settings a resumed run must share with its config. The learning rate is
    left out: training sets it from the schedule before every step, so a saved mid-schedule
    value is expected to differ from the configured one."""
    return [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in opt.param_groups]

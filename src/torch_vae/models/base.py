"""``VAE``: the base class of every model family, and the one thing the rest of torch-vae relies
on. A family subclasses it and names its config class and its two networks (``encoder_class``:
images -> ``Posterior``; ``decoder_class``: codes -> images in [0, 1]), each built from the
config; everything else comes from here and works the same for every family:

- ``encode(x) -> Posterior``, ``decode(z)``, ``reconstruct(x)`` (the posterior's mode),
  ``sample(n, generator)`` (codes from the prior), ``forward(x)`` -> ``VAEOutput``;
- ``objective(out, x, beta, recon_loss)`` and ``loss(x)``: the training objective's parts
  (``objective_terms``, per image ``per_image_terms``, combined by ``loss_of``);
- ``latent_kind``: ``"gaussian"`` (codes (B, d), a diagonal Gaussian posterior, the prior
  N(0, I)) or ``"discrete"`` (a grid of code indices, ``latent_shape``; models/vqvae.py), whose
  family overrides what its latent changes: ``encode``'s posterior (with ``mode``,
  ``reparameterize``, ``sample``, ``kl``, ``noise_shape``), ``decoder_input``, ``output``,
  ``per_image_terms``, ``loss_of``, ``prior_sample`` and ``prior_log_prob``;
- ``inference_copy()``: an eval-mode copy with the family's batch norms folded
  (``fold_batch_norm``, which each family writes for the layers it has);
- ``estimate_memory(config, batch)`` (``memory_estimate(batch)`` on a model): the bytes a
  training step needs, measured by running the model on the meta device (no memory is used,
  and no family needs its own formula);
- ``save_pretrained`` / ``from_pretrained(path, dtype=None, device=None)``: self-describing
  safetensors files (io/weights.py), whichever family wrote them.

``VAE(config)`` builds the class registered for ``config.arch`` (so ``VAE(ModelConfig(...))``
works for every family), and ``VAE.from_pretrained`` loads any family's file.

Inputs are cast to the model's dtype, so a model moved to bfloat16 encodes, decodes and
samples float32 inputs as they are; the native-size projection always runs in float32.
"""

from __future__ import annotations

import copy
import json
import numbers
import operator
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import TorchVaeError
from ..io.files import write_text_atomic
from ..io.weights import (
    CONFIG_NAME,
    STATE_NAME,
    WEIGHTS_NAME,
    is_run_config,
    read_metadata,
    read_weights,
    write_weights,
)
from ..runtime.device import DEVICES, autocast_off, available_memory, pick_device, randn
from ..version import __version__
from .conditions import class_labels
from .config import ModelConfig
from .layers import cpu_channels_last
from .losses import VAEOutput, reconstruction_error
from .posterior import Posterior, standard_normal_log_prob
from .registry import UnknownArchitecture, model_class
from .upsampling import native_maps, upsampling_projector

# Memory per stored activation element during training: the forward output kept for the
# backward pass and its gradient, in float32 (``estimate_memory``).
_ACTIVATION_COPIES = 2


class VAE(nn.Module):
    """A variational autoencoder of any registered family (see the module docstring).

    ``forward`` is pure: it returns the reconstruction and the posterior parameters and keeps no
    state. In training mode it decodes a reparameterised sample; in eval mode it decodes the
    posterior's mode, so reconstructions are deterministic.
    """

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    # the family's networks, built from the config: images -> Posterior, codes -> images
    encoder_class: ClassVar[type[nn.Module] | None] = None
    decoder_class: ClassVar[type[nn.Module] | None] = None
    # what the latent is (see the module docstring); commands that draw pictures of a
    # Gaussian latent (traverse, manifold, embed...) refuse the other kinds in one line
    latent_kind: ClassVar[str] = "gaussian"
    # the objective's parts besides "loss", as ``objective`` and the training metrics name them
    objective_terms: ClassVar[tuple[str, ...]] = ("recon", "kl")

    def __new__(cls, config: ModelConfig | None = None, *args: Any, **kwargs: Any):
        if cls is VAE and config is not None:  # the family's class
            cls = model_class(getattr(config, "arch", None))
        return super().__new__(cls)

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TorchVaeError(
                f"{type(self).__name__} takes a {self.config_class.__name__}, got "
                f"{type(config).__name__}"
            )
        self.config = config
        self.dataset: str | None = None  # what it was trained on, if known (from_pretrained)
        # the native-size projection (p,) and network_size's (up, down): _fixed_maps
        self._projector: tuple[torch.Tensor] | None = None
        self._native_maps: tuple[torch.Tensor, ...] | None = None
        # a conditional model's networks take the class too: as one-hot planes beside the
        # image's channels, and as a one-hot code beside the latent code
        k = config.num_classes
        if self.encoder_class is not None:
            self.encoder = self.encoder_class(_widened(config, in_channels=config.in_channels + k))
        if self.decoder_class is not None:
            self.decoder = self.decoder_class(_widened(config, latent_dims=config.latent_dims + k))

    # -- the contract ---------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        dtype = self.dtype
        return t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t

    @property
    def conditional(self) -> bool:
        return bool(self.config.classes)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The shape of one image's code, as ``prior_sample`` draws it: (latent_dims,)."""
        return (self.config.latent_dims,)

    def labels(self, condition: Any, n: int, generator: torch.Generator | None = None):
        """A conditional model's class labels for ``n`` images, (n,) int64 on the model's
        device: from ``condition`` (a class index or name, one per image or one for all, or a
        tensor of indices), or drawn uniformly by ``generator`` where it is None. None for an
        unconditional model, which refuses a condition."""
        if not self.conditional:
            if condition is not None:
                raise TorchVaeError(f"this {self.config.arch} model is not conditional: it "
                                    "takes no class; leave the class out (--class), or use a "
                                    "model trained with --conditional")  # fmt: skip
            return None
        return class_labels(self.config.classes, condition, n, generator, self.device)

    def _need_labels(self, condition: Any, n: int) -> torch.Tensor | None:
        if self.conditional and condition is None:
            raise TorchVaeError(
                "this model is conditional: pass each image's class (condition=... in Python, "
                "--class on the command line; see docs/training.md)"
            )
        return self.labels(condition, n)

    def encode(self, x: torch.Tensor, condition: Any = None) -> Posterior:
        """Images (B, C, H, W) in [0, 1] -> posterior q(z|x) (q(z|x, y) for a conditional
        model, given the images' classes ``condition``)."""
        c = self.config
        _check_tensor(x, "encode", "images")
        if not x.is_floating_point():
            raise TorchVaeError(f"encode takes float images in [0, 1], got {x.dtype} (uint8 "
                                "images: x.float() / 255)")  # fmt: skip
        if x.dim() != 4 or tuple(x.shape[1:]) != (c.in_channels, c.image_size, c.image_size):
            raise TorchVaeError(
                f"this model encodes images of shape (N, {c.in_channels}, {c.image_size}, "
                f"{c.image_size}), got {tuple(x.shape)}; resize them to its --image_size "
                f"{c.image_size} with {c.in_channels} channel(s) first"
            )
        x = self._native_map(x, down=True) if c.network_size else self._cast(x)
        y = self._need_labels(condition, len(x))
        if y is not None:
            planes = nn.functional.one_hot(y, self.config.num_classes).to(x.dtype)
            x = torch.cat([x, planes[:, :, None, None].expand(-1, -1, *x.shape[2:])], 1)
        post = self.encoder(x)
        # a plug-in's Gaussian encoder that returns (mu, logvar); other kinds wrap their own
        if self.latent_kind == "gaussian" and not isinstance(post, Posterior):
            raise TorchVaeError(f"the {c.arch} family's encoder returned a "
                                f"{type(post).__name__}, not a Posterior: return "
                                "Posterior.clamped(mu, logvar) (docs/model.md, Adding a "
                                "model)")  # fmt: skip
        return post

    def decode(self, z: torch.Tensor, condition: Any = None) -> torch.Tensor:
        """Latents (B, d) -> images (B, C, H, W) in [0, 1], in the model's dtype (given the
        classes ``condition`` for a conditional model).

        With ``native_size`` set, the decoder's output is projected onto the images that
        bilinear upsampling from ``native_size`` can produce (the data pipeline's resize), then
        clipped to [0, 1]. Both steps move any output closer to every such image in [0, 1], so
        they only lower the squared error to them, and the decoder spends nothing on detail
        the data cannot have. With ``network_size`` the decoder's images (network_size, their
        centre native_size) are upsampled so (already such images, and in [0, 1]).
        """
        _check_tensor(z, "decode", "codes")
        z = self._cast(z)
        x = self.decoder(self.decoder_input(z, self._need_labels(condition, len(z))))
        if self.config.network_size:
            return self._native_map(x, down=False)
        if not self.config.native_size:
            return x
        c = self.config
        (p,) = self._fixed_maps(
            "_projector", x.device, lambda: (upsampling_projector(c.native_size, c.image_size),)
        )
        return _each_side(p, x, p).clamp(0, 1).to(x.dtype)

    def _native_map(self, x: torch.Tensor, down: bool) -> torch.Tensor:
        """``network_size``: ``down``, images (B, C, image_size, image_size) to the
        network_size images the encoder takes (the least-squares native-size preimage under
        the pipeline's bilinear upsampling, zero-padded); else the decoder's network_size
        images to image_size (their centre upsampled). In float32 even under autocast, like
        the projection, then in the model's dtype (channels_last on the CPU, as the networks
        take it)."""
        c = self.config
        sizes = (c.native_size, c.image_size, c.network_size)
        up, to_native = self._fixed_maps("_native_maps", x.device, lambda: native_maps(*sizes))
        m = to_native if down else up
        y = _each_side(m, x, m.T)
        return cpu_channels_last(self._cast(y if down else y.clamp(0, 1)))

    def _fixed_maps(
        self, attr: str, device: torch.device, build: Callable[[], tuple[torch.Tensor, ...]]
    ) -> tuple[torch.Tensor, ...]:
        """Float32 matrices derived from the config (the projection's, ``network_size``'s),
        kept in ``attr``: not saved with the weights, built at the first use (``build``;
        loading a model never waits for them), moved to ``device``, and never rounded to a
        bfloat16 model's dtype (that would round away what they map)."""
        maps = getattr(self, attr)
        if maps is None or maps[0].device != device:
            maps = tuple(m.to(device) for m in (build() if maps is None else maps))
            setattr(self, attr, maps)
        return maps

    def decoder_input(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """What the decoder network takes for codes ``z`` (cast to the model's dtype) of the
        classes ``y`` (None: an unconditional model): the codes, and a conditional model's
        one-hot class beside them."""
        shape = self.latent_shape
        if not z.is_floating_point() or tuple(z.shape[1:]) != shape or z.dim() != len(shape) + 1:
            hint = " (one code: z[None])" if tuple(z.shape) == shape else ""
            dims = ", ".join(map(str, shape))
            raise TorchVaeError(f"this model decodes float codes (N, {dims}), got "
                                f"{tuple(z.shape)} {z.dtype}{hint}")  # fmt: skip
        if y is None:
            return z
        return torch.cat([z, nn.functional.one_hot(y, self.config.num_classes).to(z.dtype)], 1)

    def forward(
        self,
        x: torch.Tensor,
        sample: bool | None = None,
        generator: torch.Generator | None = None,
        condition: Any = None,
    ) -> VAEOutput:
        """Encode and decode ``x`` (of the classes ``condition``, for a conditional model).
        ``sample`` defaults to ``self.training``."""
        post = self.encode(x, condition)
        if sample is None:
            sample = self.training
        z = post.sample(generator) if sample else post.mode()
        return self.output(post, z, condition)

    def output(self, post: Posterior, z: torch.Tensor, condition: Any = None) -> VAEOutput:
        """The forward pass's output for the posterior ``post`` and the code ``z`` decoded
        (a sample of it, or its mode)."""
        return VAEOutput(self.decode(z, condition), post.mu, post.logvar)

    def prior_sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """``n`` codes (n, d) from the prior N(0, I), drawn by ``generator`` on its own device
        in float32 (a seeded CPU generator gives the same codes for a model on any device and
        dtype), on ``device`` in ``dtype`` (default: the model's)."""
        device = device or self.device
        return randn((n, self.config.latent_dims), generator, device, dtype or self.dtype)

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) of codes (..., d): (...)."""
        return standard_normal_log_prob(z)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        condition: Any = None,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """Decode ``n`` codes drawn from the prior by ``generator``: (n, C, H, W). A
        conditional model draws images of the classes ``condition`` (a class index or name
        for all, one per image, or None: classes drawn uniformly by ``generator`` after the
        codes)."""
        count = operator.index(n) if isinstance(n, numbers.Integral) else 0
        if isinstance(n, bool) or count < 1:
            raise TypeError(f"sample takes the number of images as a positive int, not {n!r}")
        n = count
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator (torch.Generator()."
                            f"manual_seed(seed)), not {generator!r}")  # fmt: skip
        z = self.prior_sample(n, generator, device)
        return self.decode(z, self.labels(condition, n, generator))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, condition: Any = None) -> torch.Tensor:
        """Decode the posterior's mode for ``x`` (deterministic)."""
        return self.decode(self.encode(x, condition).mode(), condition)

    def per_image_terms(
        self, out: VAEOutput, x: torch.Tensor, recon_loss: str = "mse"
    ) -> dict[str, torch.Tensor]:
        """The objective's parts (``objective_terms``) for each image of a forward pass
        ``out`` of ``x``, (B,) each in float32: the reconstruction error and the KL."""
        recon = reconstruction_error(out.recon, x, recon_loss)
        return {"recon": recon, "kl": Posterior(out.mu.float(), out.logvar.float()).kl()}

    def loss_of(self, terms: dict[str, Any], beta: float = 1.0) -> Any:
        """The loss from its parts (tensors or floats): ``recon + beta * kl``."""
        return terms["recon"] + beta * terms["kl"]

    def objective(
        self, out: VAEOutput, x: torch.Tensor, beta: float = 1.0, recon_loss: str = "mse"
    ) -> dict[str, torch.Tensor]:
        """The training objective of a forward pass ``out`` of ``x``: ``{"loss", "recon",
        "kl"}`` (``objective_terms``), each the mean over the batch of a per-image sum (in
        float32); ``loss = loss_of(the means, beta)``."""
        means = {k: v.mean() for k, v in self.per_image_terms(out, x, recon_loss).items()}
        return {"loss": self.loss_of(means, beta), **means}

    def loss(
        self,
        x: torch.Tensor,
        beta: float = 1.0,
        recon_loss: str = "mse",
        generator: torch.Generator | None = None,
        condition: Any = None,
    ) -> dict[str, torch.Tensor]:
        """``objective`` of a sampled forward pass of ``x`` (what one training step lowers)."""
        out = self(x, sample=True, generator=generator, condition=condition)
        return self.objective(out, x, beta, recon_loss)

    def fold_batch_norm(self) -> None:
        """Fold the model's batch norms into the layers before them, in place (eval mode only).
        A family with batch norms overrides it for the pairs it has; the default folds none."""

    @torch.no_grad()
    def inference_copy(self) -> VAE:
        """An eval-mode copy for inference: batch norms folded (``fold_batch_norm``; the same
        outputs up to float rounding), channels_last on the CPU. ``self`` is left as it is."""
        fused = copy.deepcopy(_unwrap(self)).eval()
        fused.fold_batch_norm()
        if fused.device.type == "cpu":
            fused = fused.to(memory_format=torch.channels_last)
        return fused

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- sizes, before anything is allocated -----------------------------------------------

    @classmethod
    def expected_shapes(cls, config: ModelConfig) -> dict[str, tuple[int, ...]]:
        """The shape of every tensor of a model with ``config``, without allocating it."""
        return {k: shape for k, (shape, _) in cls.expected_tensors(config).items()}

    @classmethod
    def expected_tensors(
        cls, config: ModelConfig
    ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The shape and dtype of every tensor of a model with ``config``, without allocating
        it (the model is built on the meta device)."""
        with torch.device("meta"):
            model = model_class(config.arch)(config)
        return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}

    @classmethod
    def estimate_memory(cls, config: ModelConfig, batch: int) -> int:
        """Bytes that training a model with ``config`` on batches of ``batch`` images needs,
        about: weights, gradients and AdamW's two moments (4 float copies of the parameters),
        and every layer's output kept for the backward pass with its gradient. The outputs are
        counted on a forward pass of two images through a CPU copy of the model (built without
        touching the global random state), scaled to ``batch``; a model whose weights alone do
        not fit in the CPU's memory is not built (its parameters are counted on the meta
        device). A forward pass on the meta device would import torch._dynamo through
        PyTorch's decompositions: 2 s of every training command on a 2-core CPU."""
        with torch.device("meta"):
            params = sum(p.numel() for p in model_class(config.arch)(config).parameters())
        images = 2 * batch * config.in_channels * config.image_size**2  # input and output
        weights = 4 * 4 * params
        free = available_memory(torch.device("cpu"))
        if free is not None and 4 * params > free:  # no CPU copy to count on: a lower bound
            return weights + 4 * _ACTIVATION_COPIES * images
        with torch.random.fork_rng(devices=[]):
            model = model_class(config.arch)(config).train()
        sizes: list[int] = []

        def count(module, inputs, output) -> None:
            for t in output if isinstance(output, tuple) else (output,):
                if isinstance(t, torch.Tensor):
                    sizes.append(t.numel())

        leaves = [m for m in model.modules() if not list(m.children())]
        hooks = [m.register_forward_hook(count) for m in leaves]
        try:
            x = torch.zeros(2, config.in_channels, config.image_size, config.image_size)
            y = torch.zeros(2, dtype=torch.int64) if config.classes else None
            with torch.no_grad():
                out = model(x, sample=False, condition=y)
        except RuntimeError as exc:  # a family's networks built for other images than given
            raise TorchVaeError(_misbuilt(config, str(exc).strip().splitlines()[0])) from None
        finally:
            for h in hooks:
                h.remove()
        if tuple(out[0].shape) != tuple(x.shape):
            raise TorchVaeError(_misbuilt(config, f"it decoded {tuple(x.shape)} to "
                                                  f"{tuple(out[0].shape)}"))  # fmt: skip
        return weights + 4 * _ACTIVATION_COPIES * (sum(sizes) * batch // 2 + images)

    def memory_estimate(self, batch: int) -> int:
        """``estimate_memory`` for this model's config."""
        return type(self).estimate_memory(self.config, batch)

    # -- files -----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> VAE:
        """Load a model from a run folder, a model folder or a .safetensors file; the file
        carries the family and its config, so no flags are needed. Returned in eval mode, on
        ``device`` (default: the CPU) in ``dtype`` (default: as stored, float32), with the
        dataset it was trained on (if recorded) as ``model.dataset``. Called on a family's
        class, it refuses another family's file."""
        checked = _placement(dtype, device, "VAE.from_pretrained(path, dtype, device)")
        return cls._read(path, *checked)

    @classmethod
    def _read(cls, path: str | os.PathLike, dtype: torch.dtype | None, device: torch.device) -> VAE:
        """``from_pretrained`` once ``dtype`` and ``device`` are checked (``_placement``)."""
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"the model's path must be a str or a pathlib.Path (a run folder, a "
                            f"model folder or a .safetensors file), not {path!r}")  # fmt: skip
        meta = read_metadata(path)
        config = _stored_config(meta)
        family = model_class(config.arch)
        if not issubclass(family, cls):
            raise TorchVaeError(
                f"{meta['path']} holds a {config.arch} model, not a {cls.__name__}; load it "
                "with torch_vae.load_model"
            )
        # The shapes are checked against the config before anything is allocated, so that a
        # damaged config cannot ask for a huge model.
        state = read_weights(meta["path"], family.expected_tensors(config))
        model = family(config)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise TorchVaeError(
                f"{meta['path']}: weights do not fit the stored model config ({first[-1].strip()})"
            ) from None
        bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            raise TorchVaeError(
                f"{meta['path']} holds NaN or infinite weights ({bad[0]}); the file is damaged "
                "or was saved from a diverged run: use an earlier checkpoint"
            )
        model.dataset = meta["dataset"]
        return model.to(device=device, dtype=dtype).eval()

    def save_pretrained(self, folder: str | os.PathLike, dataset: str | None = None) -> Path:
        """Write ``folder/model.safetensors`` (weights with their config inside) and
        ``folder/config.json``; ``VAE.from_pretrained(folder)`` reads it back."""
        folder = Path(folder)
        if folder.suffix.lower() == ".safetensors":
            raise TorchVaeError(f"save_pretrained writes a folder ({WEIGHTS_NAME} and "
                                f"{CONFIG_NAME}), not {folder.name}; for one file: "
                                "torch_vae.save_model(model, path)")  # fmt: skip
        if _is_run_folder(folder):
            raise TorchVaeError(f"{folder} holds a training run's record: its {CONFIG_NAME} "
                                "(the run's training config and split, which --resume and the "
                                "commands on its model read; average and sharpen keep it too) "
                                "would be replaced by save_pretrained; save into another "
                                "folder")  # fmt: skip
        dataset = dataset or self.dataset
        save_model(self, folder / WEIGHTS_NAME, dataset)
        config = {"torch_vae_version": __version__, "model": self.config.to_dict()}
        if dataset:
            config["dataset"] = dataset
        write_text_atomic(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        return folder


def _is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a training run's record (its training state, or a run's
    config.json: a run's, or that of a folder made from one by average, sharpen), not a
    model folder of ``save_pretrained``."""
    return (folder / STATE_NAME).exists() or is_run_config(folder / CONFIG_NAME)


def _check_tensor(value: Any, call: str, what: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{call} takes {what} as a torch.Tensor, not a {type(value).__name__} "
                        "(torch.as_tensor(a) converts an array)")  # fmt: skip


def _placement(dtype: Any, device: Any, call: str) -> tuple[torch.dtype | None, torch.device]:
    """``dtype`` and ``device`` checked (a one-line error for a device given as the dtype, or
    the reverse, a dtype that is not a float one, a device not here); device None: the CPU."""
    if isinstance(device, torch.dtype):
        raise TypeError(f"{call}: {device} is a dtype, given as the device; pass dtype={device} "
                        "by name")  # fmt: skip
    if _is_device(dtype):
        raise TypeError(f"{call}: {str(dtype)!r} is a device, given as the dtype; pass "
                        f"device={str(dtype)!r} by name")  # fmt: skip
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"{call}: dtype must be a floating torch.dtype such as torch.bfloat16, "
                        f"not {dtype!r}")  # fmt: skip
    if device is not None and not isinstance(device, (str, torch.device)):
        raise TypeError(f"{call}: device must be a string such as 'cpu' or 'cuda:0', or a "
                        f"torch.device, not {device!r}")  # fmt: skip
    name = str(device) if device is not None else "cpu"
    try:
        where = pick_device(name) if name == "auto" else torch.device(name)
    except RuntimeError:
        raise TorchVaeError(f"{call}: unknown device {name!r}; use 'cpu', 'cuda', 'cuda:N' or "
                            "'mps'") from None  # fmt: skip
    if where.type == "cuda" and not torch.cuda.is_available():
        raise TorchVaeError(f"{call}: device {name!r}, but no CUDA GPU is available; use 'cpu'")
    if where.type == "mps" and not torch.backends.mps.is_available():
        raise TorchVaeError(f"{call}: device {name!r}, but MPS is not available; use 'cpu'")
    return dtype, where


def _is_device(value: Any) -> bool:
    return isinstance(value, torch.device) or (
        isinstance(value, str) and value.split(":")[0] in DEVICES
    )


def _each_side(left: torch.Tensor, x: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left @ x @ right`` of images ``x`` (B, C, H, W), in float32 even under autocast: the
    fixed maps are cheap, and rounding them to 16 bits would add error of their own."""
    with autocast_off(x.device.type):
        return left @ x.float() @ right


def _widened(config: ModelConfig, **fields: int) -> ModelConfig:
    """``config`` with the wider inputs a conditional model's networks take (a copy that
    skips the checks: its ``in_channels`` is the image's and the classes' planes)."""
    if not config.classes:
        return config
    wide = copy.copy(config)
    for name, value in fields.items():
        object.__setattr__(wide, name, value)
    return wide


def _unwrap(model: nn.Module) -> nn.Module:
    """The model under a torch.compile or DistributedDataParallel wrapper."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def load_model(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> VAE:
    """``VAE.from_pretrained``: a model of any family from a run folder or a .safetensors
    file, in eval mode (note the order: the device first)."""
    return VAE._read(path, *_placement(dtype, device, "load_model(path, device, dtype)"))


def save_model(model: nn.Module, path: str | os.PathLike, dataset: str | None = None) -> Path:
    """Write ``model``'s weights (in float32) and config to ``path`` (a .safetensors file),
    atomically."""
    model = _unwrap(model)
    state = {
        k: v.float() if v.is_floating_point() and v.dtype != torch.float64 else v
        for k, v in model.state_dict().items()
    }
    return write_weights(state, model.config.to_dict(), path, dataset, type(model).__module__)


def read_config(path: str | os.PathLike) -> tuple[ModelConfig, str | None, Path]:
    """The model config, dataset and weights file of a model, without loading its weights."""
    meta = read_metadata(path)
    return _stored_config(meta), meta["dataset"], meta["path"]


def _stored_config(meta: dict[str, Any]) -> ModelConfig:
    """The config of a weights file's metadata (``read_metadata``), or a one-line error naming
    the file (and the module its family came from, where no family of its name is here)."""
    try:
        return ModelConfig.from_dict(meta["config"])
    except UnknownArchitecture as exc:
        module = meta.get("module")
        where = ""
        if exc.installed or not isinstance(module, str) or not module:
            pass  # its plug-in is there and failed to load, or the file does not say
        elif module.startswith("torch_vae."):
            where = ("; another version of torch-vae saved it, with that family (pip install "
                     "-U torch-vae for a newer one)")  # fmt: skip
        elif module == "__main__":
            where = ("; its family was defined in the script or notebook that saved it: run "
                     "that definition (its @register_model class) first")  # fmt: skip
        else:
            where = (f"; its family came from the Python module {module[:200]!r}: install the "
                     "package that provides it")  # fmt: skip
        raise TorchVaeError(f"{meta['path']}: {exc}{where}") from None
    except TorchVaeError as exc:
        raise TorchVaeError(f"{meta['path']}: {exc}") from None


def _misbuilt(config: ModelConfig, what: str) -> str:
    """The error for a family whose networks do not fit the images they are given."""
    s, c, k = config.work_size, config.in_channels, config.num_classes
    planes = f" + {k} class planes" if k else ""
    return (f"the {config.arch} model cannot encode and decode images of its config "
            f"({what}): its encoder takes images (B, {c}{planes}, {s}, {s}) and its decoder "
            f"gives images (B, {c}, {s}, {s}), {s} being config.work_size (--network_size "
            "where given, else --image_size; docs/model.md, Adding a model)")  # fmt: skip


def create_model(arch: str = "original", **fields: Any) -> VAE:
    """A new model of family ``arch`` with the config ``fields`` (the family's defaults for the
    rest): ``create_model("dcgan", image_size=32, in_channels=3, latent_dims=16)``."""
    return VAE(ModelConfig(arch=arch, **fields))


def training_memory(config: ModelConfig, batch: int) -> int:
    """``VAE.estimate_memory``: bytes a training step on ``batch`` images needs, about."""
    return model_class(config.arch).estimate_memory(config, batch)

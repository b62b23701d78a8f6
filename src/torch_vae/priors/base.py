"""Latent priors fitted after training (ex-post samplers, Ghosh et al., 2020): a density fitted
to where the training images land in the latent space, from which ``generate`` draws its codes
instead of the model's prior N(0, I). The aggregate posterior of a VAE is not N(0, I) (parts of
the prior are never visited by any image), so codes drawn from a fitted density decode to more
convincing images.

Every kind registers itself (``register_prior``) and keeps one small contract: ``kind``,
``dims``, ``info`` (what it was fitted to), ``sample(n, generator, labels=None) -> (n, d)``
float32 codes on the CPU (``labels``: the classes the codes are for, which a prior fitted to a
conditional model's codes class by class needs and the others ignore), ``describe()``,
``tensors()`` and ``from_tensors(tensors, info)``; ``fit(z, options, info, progress, labels)``.
A fitted prior lives beside the model's weights as ``sampler-<kind>.safetensors`` (its
tensors; the description in the metadata) plus a readable ``sampler-<kind>.json``; no pickle.
It records the SHA-256 of the weights it was fitted to, and is refused for any other weights.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open

from ..errors import TorchVaeError
from ..io.files import atomic_path, file_sha256, write_text_atomic
from ..io.weights import WEIGHTS_NAME, resolve_weights, save_file

log = logging.getLogger(__name__)

SAMPLER_FORMAT = "torch-vae-sampler"
ROUND_TRIPS = 1  # a transformer prior's round trips through its model, by default
FIT_PRECISIONS = ("auto", "fp32", "bf16")  # a transformer prior's fit, on the CPU
STORE_PRECISIONS = ("fp32", "fp16")  # a transformer prior's weights in its file


class Prior(Protocol):
    kind: str
    info: dict[str, Any]

    @property
    def dims(self) -> int: ...

    def sample(
        self, n: int, generator: torch.Generator | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def describe(self) -> str: ...

    def tensors(self) -> dict[str, torch.Tensor]: ...


PRIORS: dict[str, Any] = {}  # kind -> class with from_tensors(tensors, info, path)
_RANK: dict[str, int] = {}  # kind -> its place in what --sampler auto takes first


def register_prior(kinds: tuple[str, ...], rank: int):
    """Register a prior class for the kinds it reads (``from_tensors``); ``rank``: its place
    in what ``--sampler auto`` picks where several are fitted (lower first)."""

    def register(cls):
        for i, kind in enumerate(kinds):  # in the order given, at ``rank``
            PRIORS[kind] = cls
            _RANK[kind] = rank + i
        return cls

    return register


def preference() -> list[str]:
    """The fitted kinds ``--sampler auto`` looks for, best first."""
    return sorted(PRIORS, key=lambda kind: (_RANK[kind], kind))


def sampler_path(model_path: str | os.PathLike, kind: str) -> Path:
    """Where a model's fitted prior of ``kind`` lives: ``sampler-<kind>.safetensors`` in a
    model folder, ``<name>.sampler-<kind>.safetensors`` beside a weights file."""
    weights = resolve_weights(model_path)
    if weights.name == WEIGHTS_NAME:
        return weights.with_name(f"sampler-{kind}.safetensors")
    return weights.with_name(f"{weights.stem}.sampler-{kind}.safetensors")


def save_sampler(prior: Prior, path: Path) -> Path:
    """Write ``path`` (.safetensors, description in its metadata) and the same description as
    readable JSON beside it (``.json``)."""
    tensors = {k: v.contiguous() for k, v in prior.tensors().items()}
    meta = {"format": SAMPLER_FORMAT, "info": json.dumps(prior.info)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    write_text_atomic(path.with_suffix(".json"), json.dumps(prior.info, indent=2) + "\n")
    return path


# what the stale-sampler warning says is drawn where every sampler is left out
OWN_PRIOR = "latents from the model's own prior"
NOISE = "the model's own prior, uniform codes, whose samples are noise,"


def stale_samplers(model_path: str | os.PathLike) -> list[str]:
    """The kinds of the samplers beside a model that were fitted to other weights than its
    own now (read from their descriptions only), in ``preference()``'s order; one that cannot
    be read counts as stale."""
    paths = [(k, sampler_path(model_path, k)) for k in preference()]
    paths = [(k, path) for k, path in paths if path.is_file()]
    if not paths:
        return []
    sha = file_sha256(resolve_weights(model_path))
    stale = []
    for k, path in paths:
        try:
            with safe_open(str(path), framework="pt") as f:
                info = json.loads((f.metadata() or {})["info"])
        except (SafetensorError, OSError, ValueError, KeyError, RecursionError):
            info = {}
        if not isinstance(info, dict) or info.get("model_sha256") != sha:
            stale.append(k)
    return stale


def read_sampler(path: Path) -> Prior:
    """A prior written by ``save_sampler``, checked by its kind's ``from_tensors``."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        info = json.loads(meta["info"])
    except (SafetensorError, OSError, ValueError, KeyError, RecursionError) as exc:
        raise TorchVaeError(f"cannot read sampler {path} ({exc}); fit it again") from None
    if meta.get("format") != SAMPLER_FORMAT or not isinstance(info, dict):
        raise TorchVaeError(f"{path} is not a torch-vae sampler; fit it again")
    cls = PRIORS.get(info.get("kind", "gmm"))
    if cls is None:
        raise TorchVaeError(f"{path} holds a sampler of unknown kind {info.get('kind')!r}")
    return cls.from_tensors(tensors, info, path)


def load_sampler(
    model_path: str | os.PathLike, kind: str | None = None, own: str = OWN_PRIOR
) -> Prior | None:
    """The prior fitted to the model at ``model_path`` (a model folder or weights file): of
    ``kind``, or else the best one there is: the lowest validation score that ``fit-sampler``
    recorded (``info["validation"]["fd"]``, measured alike for every sampler of the model)
    where every one there has such a score, else the first in ``preference()`` (a score
    cannot rank a sampler against one without: a quick fit scored on a few images would win
    over a better one fitted before scores existed). None when there is none, so that the
    caller draws from the model's prior. A damaged sampler file (or one holding another kind
    than its name says) raises TorchVaeError, as does one of ``kind`` fitted to other weights
    (the model trained further since); without ``kind``, those are left out with a warning
    that names them to fit again: the best of the others is taken, or None (the model's own
    prior, which the warning calls ``own``) where every one there is stale."""
    return _sampler_and_stale(model_path, kind, own)[0]


def _sampler_and_stale(
    model_path: str | os.PathLike, kind: str | None = None, own: str = OWN_PRIOR
) -> tuple[Prior | None, list[str]]:
    """``load_sampler``'s prior, and the kinds of the samplers fitted to other weights that it
    left out with a warning (none where ``kind`` is asked for: that one is refused)."""
    if kind and kind not in PRIORS:
        known = ", ".join(preference())
        raise TorchVaeError(f"unknown sampler kind {kind!r}; choose one of {known}")
    paths = [(k, sampler_path(model_path, k)) for k in ((kind,) if kind else preference())]
    fitted = _readable(paths, model_path, leave_out=kind is None)
    if not fitted:
        return None, []
    weights = resolve_weights(model_path)
    sha = file_sha256(weights)  # hashed once, only where a sampler is there to check
    found = [prior for _, _, prior in fitted if prior.info.get("model_sha256") == sha]
    stale = [(k, path) for k, path, prior in fitted if prior.info.get("model_sha256") != sha]
    if stale and kind:  # asked for by name: the one sampler read
        raise _stale_error(*stale[0], weights, model_path)
    kinds = [k for k, _ in stale]
    if stale:
        how = (
            f"--sampler {kinds[0]}"
            if len(kinds) == 1
            else f"--sampler KIND, for each of {_and(kinds)}"
        )
        meanwhile = "" if found else f"; {own} meanwhile"
        log.warning("the %s sampler%s fitted to other weights than these (the model was trained "
                    "since): left out; fit %s again with torch-vae fit-sampler --model %s %s%s",
                    _and(kinds), "s were" if len(stale) > 1 else " was",
                    "them" if len(stale) > 1 else "it", model_path, how, meanwhile)  # fmt: skip
    return (_best(found, say=kind is None and len(found) > 1) if found else None), kinds


def _and(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _stale_error(k: str, path: Path, weights: Path, model_path) -> TorchVaeError:
    """The error for the sampler asked for by name (its kind ``k``, at ``path``), fitted to
    other weights: how to fit it again, and the model's own prior meanwhile."""
    return TorchVaeError(
        f"{path} was fitted to other weights than {weights} (this model's before it "
        f"trained further, or another model's); fit it again with torch-vae fit-sampler --model "
        f"{model_path} --sampler {k}, or draw from the model's own prior with --sampler prior"
    )


def _best(found: list[Prior], say: bool) -> Prior:
    """The sampler with the lowest validation score, or the first of ``found`` (in
    ``preference()``'s order) where one has none; ``say``: log why."""
    unscored = [p.kind for p in found if _score(p) == float("inf")]
    if unscored:
        if say:
            log.info("the %s sampler%s no validation score (fitted with --nscore 0, or before "
                     "scores): the samplers are taken in the order %s, not by score",
                     ", ".join(unscored), "s have" if len(unscored) > 1 else " has",
                     ", ".join(preference()))  # fmt: skip
        return found[0]
    best = min(enumerate(found), key=lambda p: (_score(p[1]), p[0]))[1]
    if say:
        log.info("the %s sampler has the best validation score of the %d fitted (FD %.4g)",
                 best.kind, len(found), _score(best))  # fmt: skip
        counts = {p.kind: p.info["validation"].get("n_images") for p in found}
        if len(set(counts.values())) > 1:  # an FD of fewer images is larger for the same fit
            log.warning("the samplers' scores were measured on different numbers of images "
                        "(%s): an FD of fewer images is larger for the same fit, so the choice "
                        "may not be the best; fit them again with one --nscore to compare them",
                        ", ".join(f"{k} {n}" for k, n in counts.items()))  # fmt: skip
    return best


def _readable(paths, model_path, leave_out: bool) -> list[tuple[str, Path, Prior]]:
    """The samplers at ``paths`` ((kind, path) pairs) that exist, read: (kind, path, prior).
    With ``leave_out``, one that cannot be read, or holds another kind than its file's name,
    is left out with a warning while another can be read; else it raises TorchVaeError."""
    fitted, refused = [], []
    for k, path in paths:
        if not path.is_file():
            continue
        try:
            prior = read_sampler(path)
            if prior.kind != k:
                raise TorchVaeError(f"{path} holds a {prior.kind} sampler, not a {k} one; fit "
                                    f"it again with torch-vae fit-sampler --model {model_path} "
                                    f"--sampler {k} --overwrite")  # fmt: skip
        except TorchVaeError as exc:
            if not leave_out:
                raise
            refused.append(exc)
            continue
        fitted.append((k, path, prior))
    if refused and not fitted:
        raise refused[0]
    for exc in refused:
        log.warning("left out: %s", exc)
    return fitted


def _score(prior: Prior) -> float:
    """The validation FD ``fit-sampler`` recorded (lower is better), infinity if none."""
    v = prior.info.get("validation")
    fd = v.get("fd") if isinstance(v, dict) else None
    return float(fd) if isinstance(fd, int | float) and fd == fd else float("inf")


def kinds_of(latent_kind: str) -> list[str]:
    """The registered kinds that fit a model whose latent is ``latent_kind``, best first."""
    return [k for k in preference() if getattr(PRIORS[k], "latent_kind", "gaussian") == latent_kind]


def _own_prior(model_path, asked: list[str], latent_kind: str, fit: str) -> None:
    """``--sampler prior``: None (the model's own prior), refusing ``asked`` flags, with a
    warning for a discrete model, whose own prior gives noise."""
    if asked:
        own = "N(0, I)" if latent_kind == "gaussian" else "uniform codes"
        raise TorchVaeError(f"{asked[0]} applies to a fitted transformer sampler, not to "
                            f"the model's own prior ({own}, --sampler prior)")  # fmt: skip
    if latent_kind == "discrete":
        fitted = sampler_path(model_path, "transformer").is_file()
        fix = ("leave --sampler out to draw from the transformer prior fitted to it" if fitted
               else f"fit a prior over its code grids ({fit} transformer) and leave --sampler "
               "out")  # fmt: skip
        log.warning("--sampler prior: a discrete model's own prior is uniform over its codes, "
                    "so its samples are noise; %s", fix)  # fmt: skip
    return None


def _refuse_drawing(asked: list[str], model_path, latent_kind: str) -> None:
    """A one-line error for the ``asked`` drawing flags on a model whose latent no transformer
    sampler draws (they had the user fit one, which such a model cannot take)."""
    if "transformer" not in kinds_of(latent_kind):
        raise TorchVaeError(f"{asked[0]} applies to a transformer sampler, which draws a "
                            f"discrete model's codes (--arch vqvae); {model_path} has a "
                            f"{latent_kind} latent: leave {asked[0]} out")  # fmt: skip


def _none_fitted(model_path, name: str, asked: list[str], latent_kind: str, fit: str) -> None:
    """No fitted sampler: for ``auto``, None (the model's own prior) with a log line (a
    warning for a discrete model, whose own prior gives noise); a one-line error for a kind
    asked for by name, or where ``asked`` flags need a fitted one."""
    if name != "auto":
        raise TorchVaeError(
            f"{model_path} has no fitted {name} sampler ({sampler_path(model_path, name).name}); "
            f"fit one with '{fit} {name}'"
            + (", or pass --sampler prior" if latent_kind == "gaussian" else "")
        )
    if asked:
        _refuse_drawing(asked, model_path, latent_kind)
        raise TorchVaeError(f"{asked[0]} applies to a fitted transformer sampler, and "
                            f"{model_path} has none: fit one, or leave {asked[0]} out")  # fmt: skip
    if latent_kind == "discrete":
        log.warning("no fitted sampler for %s: its own prior, uniform codes, gives noise; "
                    "fit one with %s transformer", model_path, fit)  # fmt: skip
    else:
        log.info("no fitted sampler for %s: latents from the prior N(0, I) (fit one with "
                 "torch-vae fit-sampler --model %s)", model_path, model_path)  # fmt: skip
    return None


def _set_drawing(prior, model_path, asked: list[str], temperature: float, guidance: float):
    """Set ``--temperature`` and ``--guidance`` on ``prior``, or a one-line error where it
    does not take the ``asked`` flags."""
    if not hasattr(prior, "temperature"):
        raise TorchVaeError(f"{asked[0]} applies to a transformer sampler, not to the "
                            f"{prior.kind} sampler of {model_path}")  # fmt: skip
    if guidance and not getattr(prior, "classes", 0):
        raise TorchVaeError(f"--guidance needs a class-conditional model's sampler (train "
                            f"--conditional); the {prior.kind} sampler of {model_path} draws "
                            "no classes: leave --guidance out")  # fmt: skip
    prior.temperature, prior.guidance = temperature, guidance


def set_drawing(
    prior,
    model_path,
    temperature: float = 1.0,
    guidance: float = 0.0,
    round_trips: int | None = None,
    model: Any = None,
) -> None:
    """``--temperature``, ``--guidance`` and ``--round_trips`` (None: the default) for an
    already chosen ``prior`` (None: the model's own prior, which takes none of them): set on a
    transformer sampler; other values than the defaults are a one-line error elsewhere.
    ``model``, the loaded model the prior draws for, is attached to a prior that uses one
    (``use_model``: the transformer's round trips, which need it)."""
    asked = _asked(temperature, guidance, round_trips)
    if asked and prior is None and model is not None:
        _refuse_drawing(asked, model_path, model.latent_kind)
    if asked and prior is None:
        raise TorchVaeError(f"{asked[0]} applies to a fitted transformer sampler, and "
                            f"{model_path} has none in use; fit one with torch-vae fit-sampler "
                            f"--model {model_path} --sampler transformer")  # fmt: skip
    if asked:
        _set_drawing(prior, model_path, asked, temperature, guidance)
    if model is not None and hasattr(prior, "use_model"):
        prior.use_model(model)
    if round_trips is not None and hasattr(prior, "round_trips"):
        if round_trips and prior.model is None:
            raise TorchVaeError("--round_trips goes through the model the prior was fitted "
                                "to: pass it (model=...)")  # fmt: skip
        prior.round_trips = round_trips


def _asked(temperature: float, guidance: float, round_trips: int | None = None) -> list[str]:
    """The drawing flags given with other values than their defaults (None: not given)."""
    flags = (("--temperature", temperature, 1.0), ("--guidance", guidance, 0.0),
             ("--round_trips", ROUND_TRIPS if round_trips is None else round_trips,
              ROUND_TRIPS))  # fmt: skip
    return [f for f, v, d in flags if v != d]


def choose_sampler(
    model_path: Path,
    name: str,
    model: Any = None,
    temperature: float = 1.0,
    guidance: float = 0.0,
    round_trips: int | None = None,
) -> Prior | None:
    """The prior that ``--sampler name`` means for the model at ``model_path`` (None: the
    model's own prior: N(0, I), or a discrete model's uniform codes, whose samples are noise:
    a warning says so). ``auto``: the fitted one that ``load_sampler`` prefers, else the
    model's own, with a log line either way; a kind: that one, or a one-line error saying how
    to fit it (or which kinds apply to the model's kind of latent). ``model``, the loaded
    ``VAE`` when given: the prior must draw its latent dimensions, and its ``latent_kind``
    decides what applies (without it: a Gaussian latent, unchecked). ``temperature``,
    ``guidance`` and ``round_trips`` (``--temperature``, ``--guidance``, ``--round_trips``;
    None: the sampler's default): set on a prior that samples with them (the transformer's;
    guidance a class-conditional one's); other values than 1, 0 and None are an error for the
    rest. ``model`` is attached to the prior (``set_drawing``)."""
    latent_dims = model.config.latent_dims if model is not None else None
    latent_kind = model.latent_kind if model is not None else "gaussian"
    asked = _asked(temperature, guidance, round_trips)
    fit = f"torch-vae fit-sampler --model {model_path} --sampler"
    if name not in ("auto", "prior") and name not in kinds_of(latent_kind):
        fits = " or ".join(kinds_of(latent_kind))
        raise TorchVaeError(f"a {name} sampler does not apply to a model with a {latent_kind} "
                            f"latent; use --sampler {fits}")  # fmt: skip
    if name == "prior":
        return _own_prior(model_path, asked, latent_kind, fit)
    own = NOISE if latent_kind == "discrete" else OWN_PRIOR
    prior, stale = _sampler_and_stale(model_path, None if name == "auto" else name, own)
    if prior is None and stale:  # left out, and said so: the model's own prior meanwhile
        return set_drawing(None, model_path, temperature, guidance, round_trips, model)
    if prior is None:
        return _none_fitted(model_path, name, asked, latent_kind, fit)
    if latent_dims is not None and prior.dims != latent_dims:
        raise TorchVaeError(
            f"{sampler_path(model_path, prior.kind)} draws {prior.dims}-d codes, but the model "
            f"has {latent_dims} latent dimensions; fit it again"
        )
    set_drawing(prior, model_path, temperature, guidance, round_trips, model)
    fitted_to = "the posterior means" if latent_kind == "gaussian" else "the training code grids"
    log.info("latents from %s fitted to %s (%s)", prior.describe(), fitted_to,
             sampler_path(model_path, prior.kind).name)  # fmt: skip
    return prior

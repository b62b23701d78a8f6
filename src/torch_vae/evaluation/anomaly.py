"""Anomaly scores of single images and how well they separate two sets of images.

Every score is larger for an image the model finds less typical:

- ``neg_elbo``: the negative ELBO in nats, -log p(x|z) + KL(q(z|x) || p(z)), with z one
  posterior sample and p(x|z) the discretized Gaussian of the NLL (``likelihood``), at the
  decoder sigma calibrated on the training split;
- ``recon``: the squared error per pixel of the posterior-mean reconstruction;
- ``iw_nll``: the importance-weighted NLL in nats (``iw_samples`` > 0), the tightest of the
  three likelihood bounds;
- ``png_bpd``: the image's complexity, the length of its PNG file (Pillow's, zlib level 9, the
  file's few dozen bytes of signature, header and end included: the same for every image)
  in bits per dimension; not a score by itself but the correction of the next two;
- ``neg_elbo_ic`` and ``iw_nll_ic``: the input-complexity corrected scores of Serrà et al.
  (2020), the likelihood score in bits per dimension minus ``png_bpd``: what the model
  explains beyond what a generic lossless compressor does.

All images are the model-sized uint8 images the model sees. ``roc`` measures a score as a
detector: out-of-distribution images positive, in-distribution images negative.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch

from ..models import VAE
from .likelihood import evaluate_model

LIKELIHOOD_SCORES = ("neg_elbo", "iw_nll")
HELP = {
    "neg_elbo": "negative ELBO (nats)",
    "recon": "reconstruction error (MSE per pixel)",
    "iw_nll": "importance-weighted NLL (nats)",
    "neg_elbo_ic": "neg_elbo minus PNG length (bits/dim)",
    "iw_nll_ic": "iw_nll minus PNG length (bits/dim)",
}


def score_names(iw_samples: int) -> tuple[str, ...]:
    """The scores measured, in the order of the tables: without ``iw_samples`` no IW-NLL."""
    names = ("neg_elbo", "recon", "iw_nll", "neg_elbo_ic", "iw_nll_ic")
    return tuple(n for n in names if iw_samples or not n.startswith("iw_"))


def png_bits_per_dim(images: np.ndarray) -> np.ndarray:
    """The PNG length (Pillow, zlib level 9) of each uint8 image (N, H, W, C), in bits per
    dimension (N,) float64."""
    from PIL import Image

    n, h, w, c = images.shape
    out = np.empty(n)
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if c == 1 else img).save(buf, format="PNG", compress_level=9)
        out[i] = 8 * buf.tell() / (h * w * c)
    return out


def image_scores(
    model: VAE,
    images: np.ndarray,
    device: torch.device,
    sigma: float,
    iw_samples: int = 0,
    batch_size: int = 100,
    seed: int = 0,
    progress: bool = True,
    desc: str = "scoring",
) -> dict[str, np.ndarray]:
    """The scores of the module docstring (and ``png_bpd``) of each uint8 image (N, H, W, C),
    as float64 arrays (N,). Each image's noise is its own (``likelihood.ImageNoise``, by its
    index in ``images`` and ``seed``), so no score depends on the batch size."""
    parts: dict[str, list[torch.Tensor]] = {}
    evaluate_model(model, torch.from_numpy(images), device, sigma, iw_samples, batch_size, seed,
                   progress, desc=desc, values=parts)  # fmt: skip

    def cat(key: str) -> np.ndarray:
        return torch.cat(parts[key]).double().cpu().numpy() if parts[key] else np.empty(0)

    dims = images.shape[1] * images.shape[2] * images.shape[3]
    scores = {"neg_elbo": cat("kl") - cat("log_px"), "recon": cat("mse")}
    if iw_samples:
        scores["iw_nll"] = cat("nll")
    scores["png_bpd"] = png_bits_per_dim(images)
    for name in LIKELIHOOD_SCORES:
        if name in scores:
            scores[f"{name}_ic"] = scores[name] / (dims * math.log(2)) - scores["png_bpd"]
    return scores


def roc(inlier: np.ndarray, outlier: np.ndarray, fpr: float = 0.05) -> dict:
    """How well a score (larger: more anomalous) picks out the ``outlier`` images among the
    ``inlier`` ones: AUROC (scikit-learn's), the ROC curve, and the operating point at the
    false-positive rate ``fpr``: the lowest threshold (flag an image when its score is >= it)
    whose false-positive rate on the inliers is at most ``fpr``, with its true-positive rate.
    The point is that of these images: a threshold to use on new images is chosen on images
    held out for it."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.r_[np.zeros(len(inlier)), np.ones(len(outlier))]
    s = np.r_[inlier, outlier]
    fprs, tprs, thresholds = roc_curve(y, s, drop_intermediate=False)
    at = int(np.flatnonzero(fprs <= fpr + 1e-12)[-1])  # fprs rises; the first point is (0, 0)
    threshold = float(thresholds[at])
    if not math.isfinite(threshold):  # no threshold has so few false positives: flag none
        threshold = float(np.nextafter(s.max(), np.inf))
    curve_fpr, curve_tpr, _ = roc_curve(y, s)  # only the corners, for the picture
    return {
        "auroc": float(roc_auc_score(y, s)),
        "target_fpr": fpr,
        "threshold": threshold,
        "tpr": float(tprs[at]),
        "fpr": float(fprs[at]),
        "curve": {"fpr": curve_fpr.tolist(), "tpr": curve_tpr.tolist()},
    }

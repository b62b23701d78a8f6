"""Helpers for the explorer's tests and bench scripts: a tiny explorer, a real server in a
thread, and Debian's Chromium under Playwright (never a browser that Playwright downloads)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

import fakedata
from torch_vae import VAE, ModelConfig
from torch_vae.explorer.app import create_app, listen, make_server
from torch_vae.explorer.state import build_explorer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def tiny_model(latent_dims: int = 3, seed: int = 0, classes: tuple[str, ...] = ()) -> VAE:
    """An untrained latent-``latent_dims`` model of 32x32 grey images (its decoder still maps
    every code to its own image), class-conditional on ``classes`` where given."""
    torch.manual_seed(seed)
    config = ModelConfig(latent_dims=latent_dims, max_filters=16, image_size=32, classes=classes)
    return VAE(config).eval()


def tiny_vq_model(seed: int = 0, classes: tuple[str, ...] = ()) -> VAE:
    """An untrained tiny VQ-VAE (``--arch vqvae``) of 32x32 grey images: an 8x8 grid of 16
    codes of 3 numbers, class-conditional on ``classes`` where given. Its codebook is spread
    over its encoder's outputs on blob images (the farthest point from those chosen, one at a
    time), so that images have grids of several codes (a new model's codes are all zero)."""
    torch.manual_seed(seed)
    config = ModelConfig(arch="vqvae", image_size=32, max_filters=16, latent_dims=3,
                         codebook_size=16, blocks=1, classes=classes)  # fmt: skip
    model = VAE(config).eval()
    x = torch.from_numpy(fakedata.blobs(32, 32, 1, seed=seed + 1)).permute(0, 3, 1, 2) / 255
    y = torch.arange(len(x)) % len(classes) if classes else None
    with torch.no_grad():
        flat = model.encode(x, y).z_e.permute(0, 2, 3, 1).reshape(-1, 3)
        chosen = [0]
        far = (flat - flat[0]).norm(dim=1)
        while len(chosen) < config.codebook_size:
            chosen.append(int(far.argmax()))
            far = torch.minimum(far, (flat - flat[chosen[-1]]).norm(dim=1))
        model.codebook.embedding.copy_(flat[chosen])
    return model


def tiny_explorer(latent_dims: int = 3, n: int = 24, conditional: bool = False,
                  discrete: bool = False):  # fmt: skip
    """An Explorer of ``tiny_model`` over ``n`` blob images labelled i % 10 ("0".."9"); with
    ``conditional``, of a model conditional on those classes; with ``discrete``, of
    ``tiny_vq_model`` (``latent_dims`` is then 3)."""
    images = fakedata.blobs(n, 32, 1, seed=0)
    labels = np.arange(n) % 10
    names = [str(i) for i in range(10)]
    classes = tuple(names) if conditional else ()
    model = tiny_vq_model(classes=classes) if discrete else tiny_model(latent_dims, classes=classes)
    return build_explorer(model, images, labels, names, name="tiny", dataset="mnist")


@contextlib.contextmanager
def serving(app, host: str = "127.0.0.1"):
    """Run ``app`` under uvicorn in a thread on a free port of ``host``; yields its URL."""
    sock = listen(host, 0)
    urls: list[str] = []
    server = make_server(app, sock, urls.append)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not urls:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        yield urls[0]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def serve_explorer(ex, sliders: int = 16):
    return serving(create_app(ex, sliders))


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: scripts/install.sh installs Debian's chromium as root"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install -e '.[dev]'"
    return None


@contextlib.contextmanager
def browser_page(width: int = 1280, height: int = 900):
    """A page of Debian's Chromium, headless, with a fresh profile; closed afterwards."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="torch-vae-chromium-")
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
                viewport={"width": width, "height": height}, offline=False,
            )  # fmt: skip
            try:
                page = context.pages[0] if context.pages else context.new_page()
                yield page
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)

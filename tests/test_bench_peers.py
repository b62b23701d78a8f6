"""bench/peers.py's network for pythae and the plain loop: the original's, written with torch.nn."""

import importlib.util
from pathlib import Path

import torch

from torch_vae import create_model

PEERS = Path(__file__).resolve().parent.parent / "bench" / "peers.py"


def _peers(monkeypatch):
    monkeypatch.syspath_prepend(str(PEERS.parent))  # its machine_info import
    spec = importlib.util.spec_from_file_location("peers_bench", PEERS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peers_plain_network_uses_only_torch_nn_layers(monkeypatch):
    peers = _peers(monkeypatch)
    model = peers._plain_model("torch.nn")
    layers = [m for m in model.modules() if not list(m.children())]
    assert layers, "the plain model has no layers"
    assert all(type(m).__module__.startswith("torch.nn.modules") for m in layers), [
        type(m) for m in layers
    ]
    tv = peers._plain_model("torch-vae")
    assert any(type(m).__module__.startswith("torch_vae") for m in tv.modules())


def test_peers_plain_network_starts_and_computes_as_the_original_model(monkeypatch):
    peers = _peers(monkeypatch)
    torch.manual_seed(5)
    plain = peers._plain_model("torch.nn")
    torch.manual_seed(5)
    ours = create_model("original", **peers.NETWORK)
    a, b = plain.state_dict(), ours.state_dict()
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same initial weights from one seed
    plain.eval()
    ours.eval()
    x = torch.rand(4, 1, peers.SIZE, peers.SIZE)
    with torch.no_grad():
        mu, logvar = plain.encode(x)
        post = ours.encoder(x)
        torch.testing.assert_close(mu, post.mu)
        torch.testing.assert_close(logvar, post.logvar)
        torch.testing.assert_close(plain.decoder(mu), ours.decoder(mu))

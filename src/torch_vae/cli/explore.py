"""``torch-vae explore``: the live explorer's web server (explorer.app) on a port."""

from __future__ import annotations

import torch

from ..explorer.app import SERVING_THREADS, allowed_hosts, create_app, listen, make_server
from ..explorer.state import load_explorer
from .common import model_and_dataset
from .options import ExploreOptions, Runtime


def _announce(url: str) -> None:
    print(f"torch-vae explore: serving {url} (Ctrl-C stops it)", flush=True)


def run(o: ExploreOptions, runtime: Runtime) -> None:
    sock = listen(o.host, o.port)  # before the work: a port in use is told at once
    try:
        model, dataset = model_and_dataset(o.model, o.dataset, runtime)
        drawing = {"temperature": o.temperature, "guidance": o.guidance,
                   "round_trips": o.round_trips}  # fmt: skip
        ex = load_explorer(model, o.model, dataset, o.data_dir, o.nimages, not runtime.quiet,
                           drawing)  # fmt: skip
        if not runtime.threads:
            torch.set_num_threads(SERVING_THREADS)
        app = create_app(ex, o.sliders, allowed_hosts(o.host))
        server = make_server(app, sock, _announce)
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # Ctrl-C: the way to stop a server, not a failure
            print("torch-vae explore: stopped", flush=True)
    finally:
        sock.close()

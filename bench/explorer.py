"""Latency of the live explorer: the time from a request to a decoded image, against a real
server on the loopback interface (127.0.0.1 or ::1 only; nothing else is ever a target).

    python bench/explorer.py                    # starts torch-vae explore on dcgan-d8 itself
    python bench/explorer.py --url http://127.0.0.1:8000/   # a server already running
    python bench/explorer.py --requests 300 --clients 20 --seconds 30 --threads 1

1. Sequential: ``--requests`` POST /api/decode of random codes, one after another on one
   keep-alive connection; each is timed from sending the request to holding the decoded PNG
   (the JSON parsed, the base64 decoded): p50, p95, p99, mean.
2. Under load: ``--clients`` concurrent clients (httpx, asyncio), each sending one request
   after another for ``--seconds`` (and at most ``--max_requests`` in all): throughput and
   the same percentiles.

Without ``--url`` the server is ``torch-vae explore --model MODEL --port 0`` in its own
process (``--threads`` passed on), stopped at the end. The client shares the machine's CPUs
with the server: on a 2-core machine both compete for them, so these are upper bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from machine_info import cpu_model

ROOT = Path(__file__).resolve().parents[1]


def loopback_only(url: str) -> str:
    host = urlsplit(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        sys.exit(f"refusing {url}: this benchmark only talks to a server on 127.0.0.1 or ::1")
    return url if url.endswith("/") else url + "/"


def start_server(model: str, threads: int) -> tuple[subprocess.Popen, str]:
    cmd = [
        sys.executable, "-m", "torch_vae", "explore", "--model", model, "--port", "0",
        "--host", "127.0.0.1", "--quiet",
    ]  # fmt: skip
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    found = re.search(r"serving (http://\S+/)", line)
    if not found:
        proc.kill()
        sys.exit(f"the server did not start: {line!r}")
    return proc, found[1]


def stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "n": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
    }


def png_of(response: httpx.Response) -> bytes:
    response.raise_for_status()
    png = base64.b64decode(response.json()["image"].split(",", 1)[1])
    assert png[:4] == b"\x89PNG"
    return png


def sequential(url: str, n: int, dims: int, seed: int) -> dict[str, float]:
    codes = np.random.default_rng(seed).standard_normal((n + 20, dims)).tolist()
    times = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for i, z in enumerate(codes):
            t = time.perf_counter()
            png_of(http.post("api/decode", json={"z": z}))
            if i >= 20:  # the first few warm up the connection and the model
                times.append(time.perf_counter() - t)
    return stats(times)


async def _client(http, codes, deadline, times, budget) -> None:
    i = 0
    while time.perf_counter() < deadline and budget[0] > 0:
        budget[0] -= 1
        t = time.perf_counter()
        png_of(await http.post("api/decode", json={"z": codes[i % len(codes)]}))
        times.append(time.perf_counter() - t)
        i += 1


async def _load(url, clients, seconds, max_requests, dims, seed) -> dict[str, float]:
    codes = np.random.default_rng(seed).standard_normal((1000, dims)).tolist()
    times: list[float] = []
    budget = [max_requests]
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(
            *(_client(http, codes[k::clients], deadline, times, budget) for k in range(clients))
        )
        wall = time.perf_counter() - start
    out = stats(times)
    out.update(clients=clients, seconds=round(wall, 2), throughput_per_s=len(times) / wall)
    return out


def shown(path: str) -> str:
    """``path`` relative to the repository when it is inside it."""
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return path


def machine() -> dict[str, str]:
    return {"cpu": cpu_model(), "cpus": str(os.cpu_count()), "load_average": str(os.getloadavg())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running explorer on the loopback interface")
    ap.add_argument("--model", default=str(ROOT / "models/fashion-mnist/dcgan-d8"))
    ap.add_argument("--threads", type=int, default=0, help="the server's --threads (0: default)")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--max_requests", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the results to this JSON file")
    args = ap.parse_args()
    proc = None
    if args.url:
        url = loopback_only(args.url)
    else:
        proc, url = start_server(args.model, args.threads)
        url = loopback_only(url)
    try:
        info = httpx.get(url + "api/info", timeout=30).json()
        result = {
            "machine_before": machine(), "url": url, "model": shown(info["model"]),
            "latent_dims": info["latent_dims"], "server_threads": args.threads or "default",
        }  # fmt: skip
        result["sequential"] = sequential(url, args.requests, info["latent_dims"], args.seed)
        print("sequential:", json.dumps(result["sequential"]), flush=True)
        result["load"] = asyncio.run(_load(
            url, args.clients, args.seconds, args.max_requests, info["latent_dims"], args.seed
        ))  # fmt: skip
        print("load:", json.dumps(result["load"]), flush=True)
        result["machine_after"] = machine()
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

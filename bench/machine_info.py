"""What a benchmark ran on, for its results: ``lscpu``'s model name and the commit measured."""

from __future__ import annotations

import platform
import subprocess


def cpu_model() -> str:
    """``lscpu``'s "Model name" (e.g. "Intel(R) Xeon(R) Processor"); where there is no lscpu
    (or no such line), ``platform.processor()``, else "unknown"."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        out = ""
    names = [line.split(":", 1)[1].strip() for line in out.splitlines()
             if line.startswith("Model name")]  # fmt: skip
    return names[0] if names else (platform.processor() or "unknown")


def code_version() -> str:
    """The checkout's commit (``git describe --always --dirty``: a "-dirty" suffix when files
    differ from it), so that a result names the code it measured; "unknown" outside git."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                             text=True, check=True, cwd=__file__.rsplit("/", 1)[0])  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def cpu_bf16() -> str:
    """What the CPU has for bf16 arithmetic, from /proc/cpuinfo's flags: "AMX" (amx_bf16),
    "AVX-512 BF16" (avx512_bf16), else "none" (``--precision auto`` is then fp32); "unknown"
    where there is no /proc/cpuinfo. Machines whose ``lscpu`` model names look alike differ
    here (a Xeon with AMX, one without bf16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])  # fmt: skip
    except OSError:
        return "unknown"
    if "amx_bf16" in flags:
        return "AMX"
    return "AVX-512 BF16" if "avx512_bf16" in flags else "none"


def timing_args(doc: str):
    """The arguments of a script that times a few layers: ``--rounds`` and ``--calls``."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="rounds, the ways alternating (5)")
    p.add_argument("--calls", type=int, default=5, help="calls timed together in a round (5)")
    return p.parse_args()


def torch_line() -> str:
    """The CPU, PyTorch and code a timing comes from, in one line."""
    import torch

    return (f"{cpu_model()} (bf16: {cpu_bf16()}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, code {code_version()}")  # fmt: skip

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

"""allocator.keep_freed_memory: memory a tensor frees is reused by the next, not faulted in
again page by page (glibc only)."""

import subprocess
import sys

import pytest

CYCLES = """
import resource, sys
import torch
import torch_vae.cli.main  # the command's modules imported, malloc tuned before the first tensor
from torch_vae.runtime.allocator import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):  # 64 MB allocated and freed before counting: the heap grows to hold it
    torch.ones(16 << 20)
before = faults()
for _ in range(20):
    torch.ones(16 << 20)  # each cycle allocates, touches every page and frees 64 MB
print(tuned, faults() - before)
"""


def _faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", CYCLES, mode], capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    return out[0] == "True", int(out[1])


@pytest.mark.slow  # a subprocess that allocates 64 MB 20 times, 7 s
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_tensors_are_reused_instead_of_faulted_in_again():
    tuned, kept = _faults("tuned")
    if not tuned:
        pytest.skip("this C library has no mallopt (not glibc)")
    _, default = _faults("default")
    # 20 x 64 MB of 4 kB pages: about 330,000 faults when each tensor comes back as new pages;
    # kept, a few cycles' worth at most (when another allocation moved the top of the heap)
    assert default > 250_000
    assert kept < default / 4


def test_default_malloc_when_asked(monkeypatch):
    from torch_vae.runtime.allocator import keep_freed_memory

    monkeypatch.setenv("TORCH_VAE_MALLOC", "default")
    assert keep_freed_memory() is False

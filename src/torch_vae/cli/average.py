"""``torch-vae average``: the weights of the last epochs of runs, averaged into a new model
folder (training.averaging)."""

from __future__ import annotations

from ..runtime.device import pick_device
from ..training.averaging import average_runs
from .common import check_outdir
from .options import AverageOptions, Runtime


def run(o: AverageOptions, runtime: Runtime) -> dict:
    if not o.out.exists():  # average_runs refuses an existing one
        check_outdir(o.out, "--out")
    device = pick_device(runtime.device, runtime.cpu)
    return average_runs(
        list(o.runs), o.last, o.out, o.data_dir, device, o.batchsize, o.seed, not runtime.quiet
    )

"""``torch-vae export``: a model's encoder and decoder as two ONNX (or TorchScript) files and a
JSON file that describes them, each file checked against PyTorch before anything is written
(models/export.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import TorchVaeError
from ..evaluation.reports import write_report
from ..io.files import locked_atomic_file
from ..models import load_model
from ..models.export import (
    CHECK_BATCHES,
    SUFFIX,
    TOLERANCE,
    export_network,
    manifest,
    max_difference,
    networks,
    require,
)
from .common import check_outdir, is_model_folder, is_shipped, model_name
from .options import ExportOptions

log = logging.getLogger(__name__)
CHECKED_BY = {"onnx": "onnxruntime", "torchscript": "torch.jit.load"}


def run(o: ExportOptions) -> Path:
    require(o.format)
    out = o.out or Path("exports") / model_name(o.model)
    info = f"export-{o.format}.json"
    names = [f"{name}{SUFFIX[o.format]}" for name in ("encoder", "decoder")]
    check_out(out, [*names, info])
    model = load_model(o.model, "cpu")
    nets = {f"{net.name}{SUFFIX[o.format]}": net for net in networks(model)}
    data = {name: export_network(net, o.format, o.opset) for name, net in nets.items()}
    diffs = {name: max_difference(net, data[name], o.format, o.seed) for name, net in nets.items()}
    worst = float(np.max(list(diffs.values())))  # NaN where any is
    if not worst <= TOLERANCE:
        raise TorchVaeError(
            f"the exported files differ from PyTorch by up to {worst:.3g} on random inputs "
            f"(more than {TOLERANCE:g}); nothing was written"
        )
    for name, content in data.items():
        with locked_atomic_file(out / name) as f:
            f.write(content)
    opset = o.opset if o.format == "onnx" else None
    write_report(out / info, manifest(model, list(nets.values()), o.format, opset, diffs))
    batches = ", ".join(map(str, CHECK_BATCHES))
    log.info("wrote %s, %s and %s to %s; %s vs PyTorch on random inputs (batches %s): max abs "
             "difference %.2g", *names, info, out, CHECKED_BY[o.format], batches,
             worst)  # fmt: skip
    return out


def check_out(out: Path, names: list[str]) -> None:
    """Before any work: ``out`` is a folder (or none yet) whose files ``names`` may be
    written; in a shipped model's folder or a run's, files there already are never written
    over (elsewhere an earlier export is replaced)."""
    if out.exists() and not out.is_dir():
        raise TorchVaeError(f"{out} (where the export goes: --out, by default exports/MODEL) is "
                            "a file, not a folder; choose another --out")  # fmt: skip
    check_outdir(out, "--out")
    for name in names:
        if (out / name).is_dir():
            raise TorchVaeError(f"{out / name} is a folder; choose another --out")
    guarded = is_shipped(out) or any(is_model_folder(p) for p in (out, out.parent))
    taken = [name for name in names if (out / name).exists()]
    if guarded and taken:
        raise TorchVaeError(
            f"--out {out} lies in a shipped model's or a run's folder and holds {taken[0]} "
            "already, which torch-vae will not write over; choose another --out (nothing was "
            "written)"
        )

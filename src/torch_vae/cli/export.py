"""``torch-vae export``: a model's encoder and decoder as two ONNX (or TorchScript) files and a
JSON file that describes them, each file checked against PyTorch before anything is written
(models/export.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import TorchVaeError
from ..evaluation.reports import write_report
from ..io.files import file_sha256, locked_atomic_file
from ..io.weights import resolve_weights
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
    sha = file_sha256(resolve_weights(o.model))
    check_out(out, [*names, info], sha)
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
    described = manifest(model, list(nets.values()), o.format, opset, diffs)
    write_report(out / info, {**described, "model": str(o.model), "model_sha256": sha})
    batches = ", ".join(map(str, CHECK_BATCHES))
    log.info("wrote %s, %s and %s to %s; %s vs PyTorch on random inputs (batches %s): max abs "
             "difference %.2g", *names, info, out, CHECKED_BY[o.format], batches,
             worst)  # fmt: skip
    return out


def check_out(out: Path, names: list[str], sha: str) -> None:
    """Before any work: ``out`` is a folder (or none yet) whose files ``names`` may be
    written; in a shipped model's folder or a run's, files there already are never written
    over; elsewhere an earlier export of the same model (weights SHA-256 ``sha``) is replaced,
    but not another model's (the folder would mix the two) nor files of no export."""
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
    _check_earlier_exports(out, names, taken, sha)


def _check_earlier_exports(out: Path, names: list[str], taken: list[str], sha: str) -> None:
    """Refuse a folder holding another model's export, or files of ``names`` that no export
    description there (``names[-1]``) accounts for (a user's own)."""
    for info in sorted(out.glob("export-*.json")) if out.is_dir() else []:
        try:
            other = json.loads(info.read_text(encoding="utf-8")).get("model_sha256")
        except (OSError, ValueError, AttributeError):
            other = None
        if other is not None and other != sha:
            raise TorchVaeError(f"--out {out} holds an export of other weights ({info.name}: "
                                "another model's, or this one's before it trained further); "
                                "choose another --out, or remove that export (nothing was "
                                "written)")  # fmt: skip
    if taken and not (out / names[-1]).is_file():
        raise TorchVaeError(f"--out {out} holds {taken[0]}, which no {names[-1]} there describes "
                            "as torch-vae's export; move it or choose another --out (nothing was "
                            "written)")  # fmt: skip

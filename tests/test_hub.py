"""hubconf.py: torch.hub.load(..., source="local") on a clone finds every shipped model."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "fashion-mnist"


def _hubconf():
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entries(module) -> set[str]:
    # torch.hub.list's rule (torch.hub.list itself only takes GitHub repositories): every
    # callable whose name does not start with "_"
    return {name for name in dir(module) if callable(getattr(module, name)) and name[0] != "_"}


def test_hub_load_local_decodes_a_latent():
    model = torch.hub.load(str(ROOT), "fashion_mnist_dcgan_d8", source="local")
    assert not model.training and model.config.latent_dims == 8
    with torch.no_grad():
        images = model.decode(torch.randn(3, 8))
    assert images.shape == (3, 1, 64, 64)
    assert 0 <= images.min() and images.max() <= 1
    weights = SHIPPED / "dcgan-d8" / "model.safetensors"
    again = torch.hub.load(str(ROOT), "vae", str(weights), source="local")
    state = again.state_dict()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_hub_entries_name_every_shipped_model():
    hub = _hubconf()
    shipped = sorted(p.parent.name for p in SHIPPED.glob("*/model.safetensors"))
    assert len(shipped) >= 6
    expected = {"fashion_mnist_" + name.replace("-", "_") for name in shipped}
    assert _entries(hub) == expected | {"vae"}
    assert hub.dependencies == ["torch", "safetensors"]
    for name in shipped:  # each entry loads its own folder's model
        entry = getattr(hub, "fashion_mnist_" + name.replace("-", "_"))
        assert entry.__doc__ and name in entry.__doc__
        config = json.loads((SHIPPED / name / "config.json").read_text())["model"]
        model = entry()
        assert model.config.latent_dims == config["latent_dims"]
        assert model.config.max_filters == config["max_filters"]
        assert (model.config.native_size or 0) == (config.get("native_size") or 0)


@pytest.mark.slow  # a subprocess, 3 s
def test_hubconf_needs_only_its_dependencies(tmp_path):
    """From a clone where torch_vae is not installed, with only torch and safetensors (and the
    standard library): hubconf puts the clone's src/ on sys.path and loads and runs a model."""
    script = f"""
import importlib.util, pathlib, sys
for name in ("numpy", "PIL", "tqdm", "pooch", "requests"):
    sys.modules[name] = None  # importing it raises ImportError
# no installed torch_vae: drop the path entries and finders (editable installs) that hold it
sys.path[:] = [p for p in sys.path if not pathlib.Path(p or ".", "torch_vae").is_dir()]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
assert importlib.util.find_spec("torch_vae") is None
import torch
model = torch.hub.load({str(ROOT)!r}, "fashion_mnist_dcgan_d2", source="local")
print(tuple(model.decode(torch.zeros(1, 2)).shape))
print(sys.modules["torch_vae"].__file__)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    shape, where = out.stdout.splitlines()
    assert shape == "(1, 1, 64, 64)"
    assert Path(where).is_relative_to(ROOT / "src")


def test_subpackages_are_reached_from_a_bare_import_and_imported_only_then():
    script = """
import sys
import torch_vae
light = "torch_vae.data" not in sys.modules
print(light, torch_vae.data.CachedImages.__name__, "torch_vae.data" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "CachedImages", "True"]

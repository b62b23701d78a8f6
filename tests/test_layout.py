"""The package's shape: each module imports only modules of lower layers (so the import graph
has no cycle and no upward edge), and no function grows past one screen."""

import ast
from pathlib import Path

import torch_vae

ROOT = Path(torch_vae.__file__).parent

# Lowest first. A module may import modules of lower layers only.
LAYERS = [
    {"errors", "version", "fileio", "images", "data.imaging", "layers",
     "allocator"},
    {"config", "device", "distributed", "flags", "data.formats", "data.download", "data.parallel",
     "plots"},
    {"options", "checkpoint", "upsampling", "data.datasets"},
    {"commands"},
    {"model", "data.cache"},
    {"losses", "speed", "trainstate", "data.torchdata", "data.labels"},
    {"data"},
    {"samplers", "classifier"},
    {"outputs", "convert", "explore"},
    {"evaluate", "quality", "pictures"},
    {"run", "average", "explorer"},
    {"train", "server"},
    {"cli"},
    {"__main__", ""},  # "": the package itself (torch_vae/__init__.py), the public API
]  # fmt: skip
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in the file (function bodies too)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in package if p]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                found.add(sub if sub in modules else target)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch_vae"):
            found.add(node.module.removeprefix("torch_vae").lstrip("."))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("torch_vae"):
                    found.add(alias.name.removeprefix("torch_vae").lstrip("."))
    return found & modules - {name}


def test_every_module_has_a_layer():
    modules = {module_name(p) for p in ROOT.rglob("*.py")}
    placed = set().union(*LAYERS)
    assert modules == placed, f"not placed: {modules - placed}, gone: {placed - modules}"


def test_no_module_imports_one_above_it():
    modules = {module_name(p) for p in ROOT.rglob("*.py")}
    layer = {m: i for i, group in enumerate(LAYERS) for m in group}
    upward = [
        f"{module_name(p) or 'torch_vae'} imports {m or 'torch_vae'}"
        for p in ROOT.rglob("*.py")
        for m in imports_of(p, modules)
        if layer[m] >= layer[module_name(p)]
    ]
    assert not upward, upward


def test_imports_are_found():
    """The import reader sees relative, absolute and function-level imports (so the layer test
    above cannot pass by missing them)."""
    fake = ROOT / "train.py"
    found = imports_of(fake, {module_name(p) for p in ROOT.rglob("*.py")})
    assert {"run", "model", "trainstate", "evaluate"} <= found


def test_functions_fit_on_one_screen():
    long = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert not long, long

"""The package's shape: each module imports only modules of lower layers (so the import graph
has no cycle and no upward edge), and no function grows past one screen."""

import ast
from pathlib import Path

import torch_vae

ROOT = Path(torch_vae.__file__).parent

# The packages (and top-level modules), lowest first. A module may import modules of its own
# package and of lower layers only: the library never imports the command line, the models
# never import the data, training or evaluation, and so on.
LAYERS = [
    {"errors", "version"},
    {"fields", "runtime", "io"},  # option fields and validators; device and precision; files
    {"models", "data"},
    {"analysis"},  # latent codes, figures, pictures
    {"priors"},  # latent priors fitted after training
    {"evaluation"},  # likelihood, sample quality, classifier
    {"training", "explorer"},
    {"cli"},  # the command line: nothing below imports it
    {"command"},  # the command's entry point (python -m torch_vae and the torch-vae script)
    {"__main__", ""},  # "": the package itself (torch_vae/__init__.py), the public API
]
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


def unit(module: str) -> str:
    """The package (or top-level module) a module belongs to: ``training.loop`` -> training."""
    return module.split(".")[0]


def test_every_package_has_a_layer():
    units = {unit(module_name(p)) for p in ROOT.rglob("*.py")}
    placed = set().union(*LAYERS)
    assert units == placed, f"not placed: {units - placed}, gone: {placed - units}"


def test_no_module_imports_a_package_above_or_beside_it():
    modules = {module_name(p) for p in ROOT.rglob("*.py")}
    layer = {u: i for i, group in enumerate(LAYERS) for u in group}
    upward = [
        f"{module_name(p) or 'torch_vae'} imports {m or 'torch_vae'}"
        for p in ROOT.rglob("*.py")
        for m in imports_of(p, modules)
        if unit(m) != unit(module_name(p)) and layer[unit(m)] >= layer[unit(module_name(p))]
    ]
    assert not upward, upward


def test_imports_are_found():
    """The import reader sees relative, absolute and function-level imports (so the layer test
    above cannot pass by missing them)."""
    found = imports_of(ROOT / "training" / "loop.py", {module_name(p) for p in ROOT.rglob("*.py")})
    assert {"training.plan", "models", "training.state", "evaluation.likelihood"} <= found
    found = imports_of(ROOT / "cli" / "main.py", {module_name(p) for p in ROOT.rglob("*.py")})
    assert "training.distributed" in found  # imported inside a function


def test_functions_fit_on_one_screen():
    long = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert not long, long

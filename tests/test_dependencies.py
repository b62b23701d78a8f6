"""Every third-party package the library imports is declared in pyproject.toml."""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imported_top_level_modules(folder: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], path)
    return found


def _top_level_imports(folder: Path) -> set[str]:
    """The top-level modules imported at the top of a module (not inside a function)."""
    found = set()
    for path in sorted(folder.rglob("*.py")):
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_package_is_declared():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0] for d in project["dependencies"]]
    declared = {_normalise(name) for name in names}
    # an extra's package (pip install 'torch-vae[mlflow]'), imported only inside functions
    extras = [d for k, v in project["optional-dependencies"].items() if k != "dev" for d in v]
    optional = {_normalise(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) for d in extras}
    at_top = _top_level_imports(ROOT / "src" / "torch_vae")
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for module, path in _imported_top_level_modules(ROOT / "src" / "torch_vae").items():
        if module in sys.stdlib_module_names or module == "torch_vae":
            continue
        names = {_normalise(d) for d in distributions.get(module, [module])}
        if names & optional and module not in at_top:
            continue
        if not names & declared:
            missing[module] = str(path.relative_to(ROOT))
    assert not missing, f"imported but not in pyproject.toml's dependencies: {missing}"

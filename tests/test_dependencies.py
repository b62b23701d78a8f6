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


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_package_is_declared():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0] for d in project["dependencies"]]
    declared = {_normalise(name) for name in names}
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for module, path in _imported_top_level_modules(ROOT / "src" / "torch_vae").items():
        if module in sys.stdlib_module_names or module == "torch_vae":
            continue
        names = {_normalise(d) for d in distributions.get(module, [module])}
        if not names & declared:
            missing[module] = str(path.relative_to(ROOT))
    assert not missing, f"imported but not in pyproject.toml's dependencies: {missing}"

"""scripts/quickstart.sh answers --help and refuses arguments before it installs or trains."""

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "quickstart.sh"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=30, cwd=SCRIPT.parent)  # fmt: skip


def test_quickstart_help_says_what_it_does_and_does_nothing_else():
    done = run("--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: [EPOCHS=N] bash")
    assert "runs/quickstart" in done.stdout and not done.stderr


def test_quickstart_refuses_arguments_in_one_line():
    done = run("--epochs", "1")
    assert done.returncode == 2 and not done.stdout
    said = "quickstart.sh takes no arguments (got: --epochs 1); see bash scripts/quickstart.sh"
    assert done.stderr == said + " --help\n"

"""The README's Python example runs as written."""

import re
from pathlib import Path

import torch_vae

README = Path(__file__).parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)  # the example writes runs/my_model: never into the checkout
    # the example loads the quickstart's run: a 1-channel 64x64 model stands in for it
    torch_vae.VAE(torch_vae.ModelConfig(arch="dcgan", depth=4)).save_pretrained("runs/quickstart")
    scope: dict = {}
    exec(compile(blocks[0], str(README), "exec"), scope)
    assert scope["images"].shape == (4, 1, 64, 64) and scope["samples"].shape == (16, 1, 64, 64)
    assert (tmp_path / "runs" / "my_model" / "model.safetensors").is_file()
    assert scope["same"].config == scope["new"].config

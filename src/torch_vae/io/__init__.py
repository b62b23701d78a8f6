"""Files: atomic writes and the sweeping of killed writers' temporaries (files.py), the
safetensors weights format (weights.py), PNG encoding and image grids (png.py)."""

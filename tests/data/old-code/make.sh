#!/usr/bin/env bash
# Writes the files beside this script with the torch-vae of commit e909fc0 (the flat package,
# before models became plug-ins), for tests/test_shipped_outputs.py:
#   run/         a run folder that version trained (40 steps on Fashion-MNIST)
#   outputs.npz  the pixels of the first 16 images its `generate` and `reconstruct` wrote,
#                per model
# Usage: bash tests/data/old-code/make.sh   (needs git, and Fashion-MNIST where the CLI finds it)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
work="$(mktemp -d)"
trap 'git -C "$root" worktree remove --force "$work/old" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$root" worktree add --detach "$work/old" e909fc0 >/dev/null
old() { (cd "$work" && PYTHONPATH="$work/old/src" python3 -m torch_vae "$@" --threads 1 --quiet); }

rm -rf "$here/run"
old train --dataset fashion-mnist --image_size 32 --max_filters 16 --latent_dims 2 --epochs 2 \
    --max_steps 40 --batchsize 64 --seed 3 --precision fp32 --run_dir "$here/run"
models=(dcgan-d2 dcgan-d8 dcgan-d64 dcgan-f192-d8 dcgan-f192-d8-p28 dcgan-f192-d8-swa)
for m in "${models[@]}" run; do
    path="$root/models/fashion-mnist/$m"; [ "$m" = run ] && path="$here/run"
    old generate --model "$path" --precision fp32 --sampler prior --seed 0 --outdir "$work/gen-$m"
done
for m in dcgan-d2 dcgan-d8 run; do
    path="$root/models/fashion-mnist/$m"; [ "$m" = run ] && path="$here/run"
    old reconstruct --model "$path" --precision fp32 --rec_testdata --nimages 64 \
        --outdir "$work/rec-$m"
done
python3 - "$work" "$here/outputs.npz" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

work, out = Path(sys.argv[1]), sys.argv[2]
arrays = {}
for folder in sorted(work.glob("[gr]e[nc]-*")):
    files = sorted(f for f in folder.glob("*_*.png"))
    arrays[folder.name] = np.stack([np.asarray(Image.open(f)) for f in files[:16]])
np.savez_compressed(out, **arrays)
print({k: v.shape for k, v in arrays.items()})
PY

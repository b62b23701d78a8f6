"""Speed benchmark of torch-vae: training, generation, reconstruction and dataset preparation.

    python bench/run.py                      # everything, about 5-10 minutes on 2 CPU cores
    python bench/run.py --train-steps 100 --celeba-n 2000 --skip original
    python bench/run.py --original ../torch-vae   # also time the original scripts, same run

Every job runs in its own Python process, so its peak memory (maximum resident set size, from
getrusage) is its own. Results are printed as a table and written as JSON (--out).

Jobs:
- train-VARIANT: ``torch-vae train`` on Fashion-MNIST at 64x64, latent 8, batch 128, for
  --train-steps steps, through the real training code (uint8 batches from the cache, converted
  to float on the fly). The cache is prepared beforehand (job prepare-fashion). Two rates: the
  one the training code records in metrics.jsonl (first step and any compilation included), and
  the steady rate after --warmup-steps steps.
- generate: ``torch-vae generate --nsamples 10000`` (PNG writing included), the whole command.
- reconstruct: ``torch-vae reconstruct --rec_testdata`` of the 10,000 Fashion-MNIST test images,
  the whole command.
- generate-bf16, reconstruct-bf16: the same with ``--precision bf16`` (--inference-precisions).
- celeba-prepare-wN: building the 64x64 cache of a synthetic CelebA (--celeba-n 178x218 JPEGs
  in the real img_align_celeba.zip layout), with N decoding processes.
- jpeg-draft: decoding + cropping + resizing one CelebA JPEG with and without Pillow's draft
  mode (libjpeg's reduced-size decoding), in one process.
- original-*: the original torch-vae scripts (--original PATH), when given.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from machine_info import cpu_model

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
RESULT_TAG = "BENCH_RESULT "
BATCH = 128
TRAIN_VARIANTS = {
    "fp32": [],
    "bf16": ["--precision", "bf16"],
    "compile": ["--compile"],
    "compile-bf16": ["--compile", "--precision", "bf16"],
    "dcgan": ["--arch", "dcgan"],  # the DCGAN-style variant (not in the default set)
    "dcgan-bf16": ["--arch", "dcgan", "--precision", "bf16"],
}
ALL_JOBS = ("train", "generate", "reconstruct", "celeba", "draft", "original", "quality", "scale")


# ----------------------------------------------------------------------------- child jobs


def _peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def _emit(result: dict) -> None:
    result["peak_rss_mb"] = round(_peak_mb(resource.RUSAGE_SELF), 1)
    children = _peak_mb(resource.RUSAGE_CHILDREN)
    if children:
        result["children_peak_rss_mb"] = round(children, 1)
    print(RESULT_TAG + json.dumps(result), flush=True)


def job_prepare_fashion(spec: dict) -> None:
    from torch_vae.data import load_split

    t0 = time.perf_counter()
    n = 0
    for split in ("train", "test"):
        n += len(load_split("fashion-mnist", split, 64, spec["data_dir"], progress=False))
    _emit({"seconds": time.perf_counter() - t0, "images": n})


def job_train(spec: dict) -> None:
    """``torch-vae train`` in this process, timing each step of the epoch loop."""
    import torch_vae.training.loop as train_mod
    from torch_vae.cli import main

    stamps: list[float] = []
    ends: list[float] = []
    base = train_mod.tqdm

    class TimedBar(base):  # the training loop iterates over its progress bar once per step
        def __iter__(self):
            for item in super().__iter__():
                stamps.append(time.perf_counter())
                yield item

        def close(self):
            ends.append(time.perf_counter())  # the first call ends the loop
            super().close()

    train_mod.tqdm = TimedBar
    t0 = time.perf_counter()
    rc = main(spec["argv"])
    wall = time.perf_counter() - t0
    if rc != 0:
        _emit({"error": f"torch-vae train exited with {rc}"})
        return
    run_dir = Path(spec["run_dir"])
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    steps = record["step"]
    warm = min(spec["warmup"], steps - 1)
    # stamps[i] = start of step i; ends[0] = end of the loop
    steady = (steps - warm) * BATCH / (ends[0] - stamps[warm])
    _emit(
        {
            "steps": steps,
            "img_per_s_recorded": record["train_img_per_s"],
            "img_per_s_steady": steady,
            "first_step_s": (stamps[1] if steps > 1 else ends[0]) - stamps[0],
            "loop_seconds": record["epoch_seconds"],
            "command_seconds": wall,
            "train_loss": record["train_loss"],
        }
    )


def job_cmd(spec: dict) -> None:
    """Run a command; report its wall time and peak memory."""
    env = dict(os.environ, **spec.get("env", {}))
    t0 = time.perf_counter()
    proc = subprocess.run(spec["argv"], cwd=spec.get("cwd"), env=env, capture_output=True)
    wall = time.perf_counter() - t0
    result = {"seconds": wall}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
        result["error"] = f"exit {proc.returncode}: {tail[-1] if tail else ''}"[:300]
    if spec.get("count"):
        result["files"] = len(list(Path(spec["count"]).glob("*.png")))
    _emit(result)


def _register_fake_celeba_md5(folder: Path) -> None:
    """The synthetic zip is not the official one: accept its own checksum."""
    import dataclasses

    from torch_vae.data import datasets
    from torch_vae.data.download import md5sum

    ds = datasets.DATASETS["celeb-a"]
    files = tuple(dataclasses.replace(f, md5=md5sum(folder / f.name)) for f in ds.files)
    datasets.DATASETS["celeb-a"] = dataclasses.replace(ds, files=files)


def job_celeba(spec: dict) -> None:
    from torch_vae.data import load_split

    data_dir = Path(spec["data_dir"])
    _register_fake_celeba_md5(data_dir / "celeba")
    digest = hashlib.sha256()
    n = 0
    t0 = time.perf_counter()
    for split in ("train", "test"):
        arr = load_split("celeb-a", split, 64, data_dir, progress=False)
        n += len(arr)
        digest.update(arr.tobytes())
    seconds = time.perf_counter() - t0
    _emit({"seconds": seconds, "images": n, "img_per_s": n / seconds, "sha256": digest.hexdigest()})


def job_draft(spec: dict) -> None:
    import numpy as np
    from PIL import Image

    from torch_vae.data.imaging import to_array

    zf = zipfile.ZipFile(spec["zip"])
    names = [n for n in zf.namelist() if n.endswith(".jpg")][: spec["n"]]
    blobs = [zf.read(n) for n in names]
    out = {}
    for draft in (False, True):
        arrays = []
        t0 = time.perf_counter()
        for b in blobs:
            with Image.open(io.BytesIO(b)) as img:
                if draft:
                    img.draft(img.mode, (64, 64))
                arrays.append(to_array(img, 3, 64, crop=True))
        out["draft" if draft else "full"] = (np.stack(arrays), time.perf_counter() - t0)
    diff = np.abs(out["draft"][0].astype(int) - out["full"][0].astype(int))
    _emit(
        {
            "images": len(blobs),
            "img_per_s_full": len(blobs) / out["full"][1],
            "img_per_s_draft": len(blobs) / out["draft"][1],
            "mean_abs_diff": float(diff.mean()),
            "max_abs_diff": int(diff.max()),
        }
    )


CHILD_JOBS = {
    "prepare-fashion": job_prepare_fashion,
    "train": job_train,
    "cmd": job_cmd,
    "celeba": job_celeba,
    "draft": job_draft,
}


# ----------------------------------------------------------------------------- parent


def child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def run_job(kind: str, spec: dict, env: dict | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--job", kind, json.dumps(spec)]
    proc = subprocess.run(cmd, env=child_env(env), capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()
    return {"error": f"job {kind} failed: {tail[-1] if tail else proc.returncode}"[:300]}


def make_celeba(root: Path, n: int, seed: int = 0) -> Path:
    """A synthetic CelebA: n 178x218 JPEGs (smooth shapes plus noise, so they compress like
    photos, a few KB each) as img_align_celeba.zip + list_eval_partition.txt."""
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:218, :178].astype(np.float32)
    lines = []
    with zipfile.ZipFile(root / "img_align_celeba.zip", "w", zipfile.ZIP_STORED) as zf:
        for i in range(1, n + 1):
            cy, cx, r = rng.uniform(80, 140), rng.uniform(70, 110), rng.uniform(40, 70)
            face = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
            color = rng.uniform(60, 240, 3)
            bg = rng.uniform(0, 255, 3) * (xx / 178)[..., None]
            img = face * color + (1 - face) * bg + rng.normal(0, 6, (218, 178, 3))
            buf = io.BytesIO()
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
            zf.writestr(f"img_align_celeba/{i:06d}.jpg", buf.getvalue())
            lines.append(f"{i:06d}.jpg {(0, 0, 0, 0, 0, 0, 0, 0, 1, 2)[i % 10]}")
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


def machine() -> dict:
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": cores,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": os.getloadavg(),
    }


def bench(args: argparse.Namespace) -> dict:
    work = args.work.resolve()
    if work.exists() and not args.keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    results: dict = {"machine": machine(), "args": _jsonable(vars(args)), "jobs": {}}
    jobs = results["jobs"]
    device = ["--device", args.device]

    def record(name: str, result: dict) -> dict:
        result["load_average_after"] = os.getloadavg()[0]
        jobs[name] = result
        print(f"  {name}: {json.dumps(result)}", flush=True)
        return result

    needs_fashion = {"train", "generate", "reconstruct"} - set(args.skip)
    if needs_fashion:
        record("prepare-fashion", run_job("prepare-fashion", {"data_dir": str(data)}))

    model_run = None
    if "train" not in args.skip or {"generate", "reconstruct"} - set(args.skip):
        variants = args.variants if "train" not in args.skip else ["fp32"]
        for v in variants:
            run_dir = work / f"train-{v}"
            shutil.rmtree(run_dir, ignore_errors=True)  # the benchmark's own scratch run
            argv = [
                "train",
                "--dataset=fashion-mnist",
                f"--data_dir={data}",
                f"--run_dir={run_dir}",
                "--epochs=1",
                f"--batchsize={BATCH}",
                "--latent_dims=8",
                "--max_filters=128",
                "--image_size=64",
                f"--max_steps={args.train_steps}",
                "--quiet",
                *device,
                *TRAIN_VARIANTS[v],
            ]
            spec = {"argv": argv, "run_dir": str(run_dir), "warmup": args.warmup_steps}
            r = record(f"train-{v}", run_job("train", spec))
            if v == "fp32" and "error" not in r:
                model_run = run_dir
    cli = [sys.executable, "-m", "torch_vae"]
    if model_run is None and {"generate", "reconstruct"} - set(args.skip):
        print("  generate/reconstruct: skipped (no trained model: the fp32 training failed)")
    elif model_run is not None:
        for precision in args.inference_precisions:
            tag = "" if precision == "fp32" else f"-{precision}"
            flags = [f"--precision={precision}", "--quiet", *device]
            if "generate" not in args.skip:
                out = work / f"samples{tag}"
                argv = [*cli, "generate", f"--model={model_run}", f"--nsamples={args.nsamples}"]
                argv += [f"--outdir={out}", *flags]
                r = record(f"generate{tag}", run_job("cmd", {"argv": argv, "count": str(out)}))
                if "error" not in r:
                    r["img_per_s"] = args.nsamples / r["seconds"]
            if "reconstruct" not in args.skip:
                out = work / f"reconstructions{tag}"
                argv = [*cli, "reconstruct", f"--model={model_run}", "--rec_testdata"]
                argv += [f"--data_dir={data}", f"--outdir={out}", *flags]
                r = record(f"reconstruct{tag}", run_job("cmd", {"argv": argv, "count": str(out)}))
                if "error" not in r:
                    r["img_per_s"] = r["files"] / r["seconds"]

    if {"celeba", "draft"} - set(args.skip):
        t0 = time.perf_counter()
        celeba = make_celeba(work / "celeba-src" / "celeba", args.celeba_n)
        print(
            f"  (made {args.celeba_n} synthetic CelebA JPEGs in {time.perf_counter() - t0:.1f} s)"
        )
        if "draft" not in args.skip:
            spec = {"zip": str(celeba / "img_align_celeba.zip"), "n": min(args.celeba_n, 1000)}
            record("jpeg-draft", run_job("draft", spec))
        if "celeba" not in args.skip:
            digests = set()
            for w in sorted({1, args.workers}):
                d = work / f"celeba-w{w}"
                (d / "celeba").mkdir(parents=True, exist_ok=True)
                for f in celeba.iterdir():
                    (d / "celeba" / f.name).symlink_to(f)
                env = {"TORCH_VAE_WORKERS": str(w)}
                r = record(f"celeba-prepare-w{w}", run_job("celeba", {"data_dir": str(d)}, env))
                digests.add(r.get("sha256"))
            results["celeba_identical_across_workers"] = len(digests) == 1

    if "original" not in args.skip:
        results["original"] = bench_original(args, work, record)
    return results


def bench_paired(args: argparse.Namespace) -> dict:
    """The --compare run: only the Fashion-MNIST cache and the paired jobs."""
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(), "args": _jsonable(vars(args)), "jobs": {}}

    def record(name: str, result: dict) -> dict:
        result["load_average_after"] = os.getloadavg()[0]
        results["jobs"][name] = result
        print(f"  {name}: {json.dumps(result)}", flush=True)
        return result

    record("prepare-fashion", run_job("prepare-fashion", {"data_dir": str(work / "data")}))
    results["compare"] = bench_compare(args, work, work / "data", record)
    if "quality" not in args.skip:
        results["quality"] = bench_quality(args, work, work / "data", record)
    if "scale" not in args.skip:
        results["scale"] = bench_scale(args, work)
    return results


# also bench/time_to_quality.py's "network-32-b64" (which times the earlier recipes beside it)
QUALITY_RECIPE = ["--arch=dcgan", "--native_size=28", "--network_size=32", "--lr=2e-3",
                  "--lr_schedule=cosine", "--epochs=6", "--batchsize=64",
                  "--latent_dims=8"]  # fmt: skip
QUALITY_TARGET = 54.88  # the original's latent-8 model after its 100 epochs
QUALITY_SECONDS = 120  # the goal: that quality within 2 minutes on 2 CPU cores


def bench_quality(args: argparse.Namespace, work: Path, data: Path, record) -> dict:
    """Time to the original's quality: ``torch-vae train`` with QUALITY_RECIPE from scratch
    (the whole command, start to saved model), then the test objective of what it saved, by
    ``torch-vae evaluate`` in fp32 (not timed). The original's own recipe is 100 epochs at
    batch 32: hours here, so it is not run; its epoch in this run gives a lower bound."""
    run = work / "quality-run"
    shutil.rmtree(run, ignore_errors=True)
    os.sync()
    cli = [sys.executable, "-m", "torch_vae"]
    argv = [*cli, "train", *QUALITY_RECIPE, "--dataset=fashion-mnist", f"--data_dir={data}",
            f"--run_dir={run}", "--quiet", "--device=cpu"]  # fmt: skip
    r = record("quality train", run_job("cmd", {"argv": argv}))
    report = work / "quality-report.json"
    subprocess.run([*cli, "evaluate", f"--model={run}", "--iw_samples=0", f"--data_dir={data}",
                    f"--report={report}", "--quiet", "--device=cpu"], env=child_env(),
                   check=True)  # fmt: skip
    r["objective"] = json.loads(report.read_text())["objective"]
    r["recipe"] = " ".join(QUALITY_RECIPE)
    return r


def bench_scale(args: argparse.Namespace, work: Path) -> dict:
    """bench/scale.py, in its own process: the data-larger-than-memory measurements."""
    out = work / "scale.json"
    argv = [sys.executable, str(Path(__file__).with_name("scale.py")), f"--out={out}",
            f"--work={args.scale_work}", f"--images={args.scale_images}"]  # fmt: skip
    print(f"  scale: {' '.join(argv[1:])}", flush=True)
    proc = subprocess.run(argv, env=child_env())
    if proc.returncode != 0 or not out.exists():
        return {"error": f"bench/scale.py exited with {proc.returncode}"}
    return json.loads(out.read_text())


def bench_original(args: argparse.Namespace, work: Path, record) -> dict | str:
    """The original torch-vae scripts, run as their README says, in a scratch folder."""
    if args.original is None:
        msg = "skipped: pass --original PATH (a checkout of the original torch-vae) to compare"
        print(f"  original: {msg}")
        return msg
    src = args.original.resolve()
    missing = [s for s in ("train.py", "generate.py", "reconstruct.py") if not (src / s).is_file()]
    if missing:
        msg = f"skipped: {src} has no {', '.join(missing)}"
        print(f"  original: {msg}")
        return msg
    scratch = work / "original"
    scratch.mkdir(parents=True, exist_ok=True)
    data = args.original_data or (src / "data")
    if data.exists() and not (scratch / "data").exists():
        (scratch / "data").symlink_to(data.resolve())
    py = [original_python(src, args.original_python)]
    cpu = ["--cpu"] if args.device == "cpu" else []
    out: dict = {"path": str(src), "python": py[0]}
    if not args.original_skip_train:
        argv = [*py, str(src / "train.py"), *cpu, "--batchsize=128", "--epochs=1"]
        argv += ["--dataset=fashion-mnist", "--latent_dims=8"]
        r = record("original-train", run_job("cmd", {"argv": argv, "cwd": str(scratch)}, {}))
        if "error" not in r:
            r["img_per_s_command"] = 60000 / r["seconds"]
    model = args.original_model
    if model is None:
        found = sorted((scratch / "models").rglob("*.pth"), key=lambda p: p.stat().st_mtime)
        model = found[-1] if found else None
    if model is None:
        print("  original generate/reconstruct: skipped (no .pth model; pass --original-model)")
        return out
    n = args.original_nsamples
    argv = [*py, str(src / "generate.py"), *cpu, f"--model={model}", "--latent_dims=8"]
    argv += ["--max_filters=128", f"--nsamples={n}", "--outdir=samples", "--nimg_channels=1"]
    r = record("original-generate", run_job("cmd", {"argv": argv, "cwd": str(scratch)}))
    if "error" not in r:
        r["img_per_s"] = n / r["seconds"]
    argv = [*py, str(src / "reconstruct.py"), *cpu, f"--model={model}", "--rec_testdata"]
    argv += ["--dataset=fashion-mnist", "--latent_dims=8", "--max_filters=128", "--outdir=rec"]
    r = record("original-reconstruct", run_job("cmd", {"argv": argv, "cwd": str(scratch)}))
    if "error" not in r:
        r["img_per_s"] = 10000 / r["seconds"]
    return out


def original_python(src: Path, given: Path | None = None) -> str:
    """The Python that runs the original's scripts: ``given`` (--original-python), else a
    virtual environment beside or inside its checkout (PATH/../venv, PATH/venv, PATH/.venv),
    else this one."""
    if given is not None:
        return str(given)
    for venv in (src.parent / "venv", src / "venv", src / ".venv"):
        if (venv / "bin" / "python").is_file():
            return str(venv / "bin" / "python")
    return sys.executable


def compare_jobs(args: argparse.Namespace, work: Path, data: Path) -> dict[str, list]:
    """The paired jobs of --compare: each row's original command and torch-vae commands, as
    (label, job spec) lists; the original's pretrained latent-8 model is imported so that
    both sides run the same weights."""
    src = args.original.resolve()
    scratch = work / "original"
    scratch.mkdir(parents=True, exist_ok=True)
    if not (scratch / "data").exists():
        (scratch / "data").symlink_to((args.original_data or src / "data").resolve())
    pth = args.original_model or src / "models/fashion-mnist/vae_filters_0128_dims_0008.pth"
    ours = work / "imported.safetensors"
    cli = [sys.executable, "-m", "torch_vae"]
    subprocess.run([*cli, "import-torch-vae", str(pth.resolve()), "--dataset=fashion-mnist",
                    f"--out={ours}", "--quiet"], env=child_env(), check=True)  # fmt: skip
    opy, cpu, n = original_python(src, args.original_python), ["--cpu"], args.compare_nsamples
    model = [f"--model={pth.resolve()}", "--latent_dims=8", "--max_filters=128"]
    original = {
        "train": [opy, str(src / "train.py"), *cpu, "--batchsize=128", "--epochs=1",
                  "--dataset=fashion-mnist", "--latent_dims=8"],
        "reconstruct": [opy, str(src / "reconstruct.py"), *cpu, *model, "--rec_testdata",
                        "--dataset=fashion-mnist", "--outdir=rec"],
        "generate": [opy, str(src / "generate.py"), *cpu, *model, f"--nsamples={n}",
                     "--outdir=samples", "--nimg_channels=1"],
    }  # fmt: skip
    original_out = {"train": None, "reconstruct": scratch / "rec", "generate": scratch / "samples"}
    rows: dict[str, list] = {}
    for what in [w for w in ("train", "reconstruct", "generate") if w not in args.skip]:
        spec = {"argv": original[what], "cwd": str(scratch)}
        if original_out[what] is not None:  # each round starts with no output, on both sides
            spec["rm"] = str(original_out[what])
        pairs = [("original", spec)]
        precisions = args.compare_train_precisions if what == "train" else args.compare_precisions
        for precision in precisions:
            out = work / f"cmp-{what}-{precision}"
            argv = [*cli, what, f"--precision={precision}", "--quiet", "--device=cpu"]
            if what == "train":
                argv += [f"--data_dir={data}", f"--run_dir={out}", "--dataset=fashion-mnist",
                         "--epochs=1", "--batchsize=128", "--latent_dims=8", "--max_filters=128",
                         "--image_size=64"]  # fmt: skip
            else:
                argv += [f"--model={ours}", f"--outdir={out}"]
                argv += ["--rec_testdata", f"--data_dir={data}"] if what == "reconstruct" else [
                    f"--nsamples={n}"]  # fmt: skip
            pairs.append((f"torch-vae {precision}", {"argv": argv, "rm": str(out)}))
        rows[what] = pairs
    return rows


def bench_compare(args: argparse.Namespace, work: Path, data: Path, record) -> dict:
    """--compare N: every row's original command and torch-vae commands in turn (original,
    then torch-vae, N times over), whole commands, wall seconds; medians and their ratios."""
    import statistics

    rows = compare_jobs(args, work, data)
    times: dict[str, dict[str, list[float]]] = {w: {} for w in rows}
    for rep in range(1, args.compare + 1):
        for what, pairs in rows.items():
            for label, spec in pairs:
                if spec.get("rm"):  # the output of the previous round
                    shutil.rmtree(spec["rm"], ignore_errors=True)
                os.sync()  # the previous job's files are on disk before this one starts
                job = {k: v for k, v in spec.items() if k != "rm"}
                r = record(f"{what} {label} #{rep}", run_job("cmd", job))
                if "error" not in r:
                    times[what].setdefault(label, []).append(r["seconds"])
    medians = {w: {k: statistics.median(v) for k, v in t.items()} for w, t in times.items()}
    return {"runs": times, "medians": medians}


def compare_table(results: dict, nsamples: int) -> str:
    """Markdown, one table: the paired rows (the original's median beside each torch-vae
    variant), then time to the original's quality and the scale measurements."""
    cmp = results["compare"]
    what = {"train": "train 1 epoch (60,000 images, original arch, latent 8, batch 128)",
            "reconstruct": "reconstruct the 10,000 test images (PNGs)",
            "generate": f"generate {nsamples:,} samples (PNGs)"}  # fmt: skip
    lines = ["| job | original | torch-vae | ratio | runs |", "|---|---|---|---|---|"]
    for w, med in cmp["medians"].items():
        orig = med.get("original")
        for label, sec in med.items():
            if label == "original":
                continue
            ratio = f"**{orig / sec:.2f}x**" if orig else "-"
            runs = len(cmp["runs"][w][label])
            lines.append(
                f"| {what[w]}, {label} | {_fmt(orig, 1)} s | {sec:.1f} s | {ratio} | {runs} |"
            )
    lines += _quality_rows(results)
    lines += _scale_rows(results.get("scale"))
    return "\n".join(lines)


def _quality_rows(results: dict) -> list[str]:
    q = results.get("quality")
    if not q:
        return []
    if "error" in q:
        return [f"| time to objective <= {QUALITY_TARGET} (latent 8) | - | {q['error']} | | |"]
    epoch = results["compare"]["medians"].get("train", {}).get("original")
    bound = f">= {100 * epoch / 3600:.1f} h (100 epochs)" if epoch else "100 epochs (not run)"
    quality = "reached" if q["objective"] <= QUALITY_TARGET else "not reached"
    timely = "met" if q["seconds"] <= QUALITY_SECONDS else "not met"
    return [
        f"| time to test objective <= {QUALITY_TARGET} at latent 8, start to saved model "
        f"(torch-vae: `train {q['recipe']}`) | {bound} | {q['seconds']:.1f} s (goal "
        f"{QUALITY_SECONDS} s: {timely}), objective {q['objective']:.2f} ({quality}) | - | 1 |"
    ]


def _scale_rows(r: dict | None) -> list[str]:
    """The scale measurements (bench/scale.py). The original is not run on them: it has no
    cache (torchvision's CelebA decodes each JPEG at every step), so there is nothing of its
    to measure against these goals."""
    if not r:
        return []
    if "error" in r:
        return [f"| scale (bench/scale.py) | - | {r['error']} | | |"]
    none = "not run"
    t, m, c = r["train"], r["compare_mapped"], r["compare_in_memory"]
    one = sum(x.get("pss_mb", 0) for x in r["torchrun_1"])
    two = sum(x.get("pss_mb", 0) for x in r["torchrun_2"])
    rows = [
        ("scale: building the cache, peak RSS of the builder",
         f"{r['build'].get('peak_rss_mb', 0):.0f} MB ({r['cache_gb']:.2f} GB cache)"),
        ("scale: start-up to the first step, cache in place (goal <= 5 s)",
         f"{t.get('startup_s', 0):.1f} s"),
        ("scale: peak RSS of a training process at 128x128 (goal <= 2 GB)",
         f"{t.get('peak_rss_mb', 0):.0f} MB ({t.get('img_per_s', 0):.0f} img/s)"),
    ]  # fmt: skip
    if "img_per_s" in m and "img_per_s" in c:
        rows.append(("scale: throughput from the cache file vs in memory, 64x64 (goal >= 90%)",
                     f"{m['img_per_s']:.0f} vs {c['img_per_s']:.0f} img/s: "
                     f"{m['img_per_s'] / c['img_per_s']:.1%}"))  # fmt: skip
    if one and two:
        rows.append(("scale: PSS of 2 torchrun processes vs 1 (goal <= 1.2x)",
                     f"{two:.0f} vs {one:.0f} MB: {two / one:.2f}x"))  # fmt: skip
    return [f"| {name} | {none} | {value} | - | 1 |" for name, value in rows]


def _jsonable(d: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


def _fmt(x, digits=0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def table(results: dict) -> str:
    jobs = results["jobs"]
    rows = [("job", "images/s", "seconds", "peak RSS MB", "notes")]
    for name, r in jobs.items():
        if "error" in r:
            rows.append((name, "-", "-", "-", "ERROR " + r["error"]))
            continue
        peak = r.get("peak_rss_mb")
        if r.get("children_peak_rss_mb"):
            peak = max(peak or 0, r["children_peak_rss_mb"])
        if name.startswith("train-"):
            note = (
                f"{r['steps']} steps; recorded {_fmt(r['img_per_s_recorded'])} img/s, "
                f"first step {r['first_step_s']:.1f} s"
            )
            rows.append(
                (name, _fmt(r["img_per_s_steady"]), _fmt(r["loop_seconds"], 1), _fmt(peak), note)
            )
        elif name == "jpeg-draft":
            note = (
                f"full decode {_fmt(r['img_per_s_full'])} img/s; mean |diff| "
                f"{r['mean_abs_diff']:.2f}, max {r['max_abs_diff']} (of 255)"
            )
            rows.append((name, _fmt(r["img_per_s_draft"]), "-", _fmt(peak), note))
        elif name == "original-train":
            note = "1 epoch (60,000 images), whole command"
            rows.append(
                (name, _fmt(r.get("img_per_s_command")), _fmt(r["seconds"], 1), _fmt(peak), note)
            )
        else:
            note = f"{r['files']} PNGs, whole command" if "files" in r else ""
            if "images" in r and name.startswith("celeba"):
                note = f"{r['images']} JPEGs -> cache"
            rate = r.get("img_per_s")
            rows.append((name, _fmt(rate), _fmt(r["seconds"], 1), _fmt(peak), note))
    widths = [max(len(str(row[i])) for row in rows) for i in range(4)]
    lines = []
    for i, row in enumerate(rows):
        cells = [
            str(c).ljust(w) if j == 0 else str(c).rjust(w)
            for j, (c, w) in enumerate(zip(row[:4], widths, strict=True))
        ]
        lines.append("  ".join(cells) + "  " + row[4])
        if i == 0:
            lines.append("-" * (sum(widths) + 8 + len(row[4])))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=Path("bench/results.json"), help="JSON results")
    p.add_argument("--work", type=Path, default=Path("bench/work"), help="scratch folder")
    p.add_argument("--keep", action="store_true", help="reuse the scratch folder (and caches)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, mps")
    p.add_argument("--train-steps", type=int, default=200, help="steps per training job (200)")
    p.add_argument("--warmup-steps", type=int, default=10, help="steps not in the steady rate")
    p.add_argument(
        "--variants",
        type=lambda s: s.split(","),
        default=["fp32", "bf16", "compile", "compile-bf16"],
        help=f"training variants, comma-separated, of {','.join(TRAIN_VARIANTS)}",
    )
    p.add_argument(
        "--inference-precisions",
        type=lambda s: s.split(","),
        default=["fp32", "bf16"],
        help="--precision values for generate and reconstruct (fp32,bf16)",
    )
    p.add_argument("--nsamples", type=int, default=10000, help="samples to generate (10000)")
    p.add_argument("--celeba-n", type=int, default=3000, help="synthetic CelebA JPEGs (3000)")
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes for CelebA (CPUs)"
    )
    p.add_argument(
        "--skip", type=lambda s: s.split(","), default=[], help=f"of {','.join(ALL_JOBS)}"
    )
    p.add_argument("--original", type=Path, help="checkout of the original torch-vae scripts")
    p.add_argument("--original-data", type=Path, help="its data folder (default PATH/data)")
    p.add_argument("--original-model", type=Path, help=".pth model for its generate/reconstruct")
    p.add_argument("--original-nsamples", type=int, default=1000, help="its generate count")
    p.add_argument("--original-skip-train", action="store_true", help="skip its 1-epoch training")
    p.add_argument(
        "--original-python",
        type=Path,
        help="the Python for its scripts (default: PATH/../venv, PATH/venv or PATH/.venv, else "
        "this one)",
    )
    p.add_argument(
        "--compare",
        type=int,
        default=0,
        metavar="N",
        help="with --original: only the paired comparison (train 1 epoch, reconstruct, "
        "generate), original and torch-vae in turn, N times; medians and ratios",
    )
    p.add_argument(
        "--compare-precisions",
        type=lambda s: s.split(","),
        default=["fp32", "auto"],
        help="torch-vae --precision values in the comparison (fp32,auto)",
    )
    p.add_argument(
        "--compare-train-precisions",
        type=lambda s: s.split(","),
        default=["auto"],
        help="torch-vae --precision values for the training row (auto)",
    )
    p.add_argument("--compare-nsamples", type=int, default=2000, help="generate count (2000)")
    p.add_argument("--scale-images", type=int, default=202_599,
                   help="with --compare: bench/scale.py's split size (202,599)")  # fmt: skip
    p.add_argument("--scale-work", type=Path, default=Path("bench/work-scale"),
                   help="with --compare: bench/scale.py's folder (its cache is kept)")  # fmt: skip
    args = p.parse_args(argv)
    if args.job:
        sys.path.insert(0, str(SRC))
        CHILD_JOBS[args.job](json.loads(args.spec))
        return 0
    unknown = set(args.variants) - set(TRAIN_VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}")
    print(f"torch-vae benchmark (work folder {args.work}); jobs run one at a time:", flush=True)
    if args.compare and args.original is None:
        p.error("--compare needs --original PATH")
    results = bench_paired(args) if args.compare else bench(args)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    text = table(results)
    if args.compare:
        text = compare_table(results, args.compare_nsamples)
    print("\n" + text)
    m = results["machine"]
    print(
        f"\n{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads); "
        f"load average at start {m['load_average_at_start'][0]:.2f}, "
        f"at end {m['load_average_at_end'][0]:.2f}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

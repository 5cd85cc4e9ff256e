"""GPU epoch benchmark: `short_res` and `crnn` trained for a fixed number of steps from an MTAT-like store.

One run, in this order:

1. an MTAT-like store is built by `pipe build`'s own code on every core: the catalog's ``mtat`` clip
   policy (29.12 s, whole clips) and shard size, the features the two models read
   (``get_model(name).input``: 16 kHz waveform for short_res, 96-mel log-mel at 12 kHz for crnn),
   from a few synthetic MP3s (``_synth.py``) repeated up to ``--clips`` rows (MTAT's clips, not its
   25,863: the default is what ``--steps`` of each model needs, 6,416 rows for 200 steps); build
   seconds and clips/s are recorded;
2. per model, each configuration trains ``--steps`` steps after ``--warmup`` steps, through
   ``Run.train_epoch`` (the loop ``train run`` uses): cache=ram without and with ``--amp``, then
   streaming (cache=none, amp) with each of ``--stream-workers`` DataLoader workers. Recorded per
   configuration: samples/s, data-wait fraction (time the step loop waited on the loader / epoch
   time), peak GPU memory (``torch.cuda.max_memory_allocated`` over the timed epoch), steps and
   examples (counted by hooks on the optimizer and the model), batch size, cache, workers;
3. with 2 or more GPUs, ``train run`` of each model under ``torchrun --nproc_per_node 2`` (one
   epoch of the store's train split; its history.csv's samples_per_s); skipped with a note otherwise.

Steps: ``Run`` has no steps limit, so a configuration is ``TrainConfig(max_clips=steps * batch_size,
epochs=1)``: one epoch of the first ``steps * batch`` train clips is exactly ``steps`` batches (one
loader process; with several workers each worker's last batch may be short, so steps can exceed
``--steps`` by up to workers - 1, while the examples stay exact). The warm-up is a separate Run of
``warmup * batch`` clips of the same configuration: CUDA context, cuDNN/cuBLAS handles and the
allocator's cache are process-wide, so the timed epoch starts warm. A worker start-up is part of
each timed streaming epoch, as it is of every epoch of ``train run``.

Results go to ``$OUT/gpu_epoch.json`` and ``$OUT/gpu_epoch.md`` when ``$OUT`` is set, else to
``--out DIR``; both are rewritten after each configuration, so a run stopped at its limit keeps
what it measured.

Usage:
  python benchmarks/gpu_epoch.py --smoke                      # CPU, the whole script, ~1 min of 2 cores
  python benchmarks/gpu_epoch.py --device cuda [--steps 200] [--warmup 20] [--clips N] [--out DIR]

On the device machine (one H200, 16 cores; python3 3.12 with torch, numpy, pandas, numba...; no
dask, distributed, zarr, soundfile, soxr or librosa, and no registry to fetch them from). Once, in
the checkout that the device tool sends, fetch their wheels for Python 3.12 (15 MB)::

  echo /.whl/ >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \\
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \\
    dask==2026.8.0 distributed==2026.8.0 zarr==3.1.6 numcodecs==0.16.6 google-crc32c==1.9.0 \\
    donfig==0.8.1.post1 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0 librosa==0.11.0 \\
    audioread==3.1.0 pooch==1.9.0 platformdirs==4.14.9 partd==1.4.2 locket==1.0.0 tblib==3.2.2 \\
    tornado==6.6.1 zict==3.0.0 decorator==5.3.1

then call the device tool's ``run`` with carry ``[".whl"]``, timeout_s 540 and this command (3 lines)::

  set -o pipefail; export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir -U --target /tmp/site .whl/*.whl || exit
  python3 benchmarks/gpu_epoch.py --device cuda --budget-s 450 2>&1 | tee $OUT/log.txt

``--budget-s`` skips what is still to run (configurations, DDP) once that many seconds have passed,
so the files come back before the tool's limit.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synth import make_mtat_like, timed_build

MODELS = ("short_res", "crnn")
HOLDOUT = 8  # valid and test clips each: a Run needs both, the timed epochs never read them
N_CLASSES = 50
#: CPU-sized: 4 s clips (short_res needs 3.7 s), batches of 2, 3 steps, streaming with 2 workers only, 1 Dask worker
SMOKE = ("--device", "cpu", "--steps", "3", "--warmup", "1", "--batch-size", "2", "--clip-seconds", "4",
         "--unique", "2", "--stream-workers", "2", "--build-workers", "1")  # fmt: skip


def build_store(url: Path, audio: Path, *, n_clips: int, unique: int, workers: int, seconds: float | None) -> dict:
    """An MTAT-like store of ``n_clips`` rows (``unique`` MP3s repeated) holding both models' inputs."""
    from pipeline.config import BuildConfig, load_catalog
    from pipeline.index import DatasetIndex
    from training.models import get_model

    mtat = load_catalog()["mtat"]
    clip = mtat["clip"] if seconds is None else {**mtat["clip"], "seconds": seconds}
    started = time.perf_counter()
    paths = make_mtat_like(audio, n_clips=unique, **({} if seconds is None else {"seconds": seconds}))
    synth_seconds = time.perf_counter() - started
    config = BuildConfig.from_dict({
        "dataset": "mtat_like", "recipe": "folder", "task": "multilabel", "splits": ["random"],
        "clip": clip, "batch_clips": mtat["batch_clips"],
        "features": [get_model(name).input.feature_spec() for name in MODELS],
    })  # fmt: skip
    rng = np.random.default_rng(0)
    part = ["train"] * (n_clips - 2 * HOLDOUT) + ["valid"] * HOLDOUT + ["test"] * HOLDOUT
    index = DatasetIndex(
        root=str(audio), task="multilabel", classes=tuple(f"tag{j}" for j in range(N_CLASSES)),
        clips=pd.DataFrame({"clip_id": [f"c{i:05d}" for i in range(n_clips)],
                            "path": [str(paths[i % unique].relative_to(audio)) for i in range(n_clips)]}),
        labels=(rng.random((n_clips, N_CLASSES)) < 0.1).astype(np.uint8), splits=pd.DataFrame({"random": part}),
    )  # fmt: skip
    _, seconds = timed_build(config, source=str(audio), out=str(url), index=index, workers=workers)
    return {"clips": n_clips, "clip_seconds": clip["seconds"], "unique_mp3s": unique, "workers": workers,
            "synth_seconds": round(synth_seconds, 1), "build_seconds": round(seconds, 1),
            "clips_per_s": round(n_clips / seconds, 1)}  # fmt: skip


def timed_epoch(config, work: Path, *, warmup: int) -> dict:
    """Train ``config``'s one epoch after a warm-up Run of ``warmup`` batches; its figures and exact counts."""
    from training.run.loop import Run

    batch = config.batch_size
    if warmup:
        warm = dataclasses.replace(config, max_clips=max(2, warmup * batch))
        Run(warm, work / "warmup", progress=False).train_epoch(0)
    run = Run(config, work / "timed", progress=False)
    counts = {"steps": 0, "examples": 0}

    def count_step(*_) -> None:
        counts["steps"] += 1

    def count_examples(_, inputs) -> None:
        counts["examples"] += len(inputs[0])

    run.optimizer.register_step_post_hook(count_step)
    run.model.register_forward_pre_hook(count_examples)
    on_gpu = run.device.type == "cuda"
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    stats = run.train_epoch(0)  # loss.item() each step synchronises: the epoch's clock includes the GPU's work
    return {
        "model": config.model, "amp": config.amp, "cache": run.cache, "workers": config.workers, "batch_size": batch,
        **counts, "samples_per_s": round(stats["samples_per_s"], 1),
        "data_wait_fraction": round(stats["data_wait_fraction"], 3), "train_seconds": round(stats["train_seconds"], 2),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if on_gpu else None,
    }  # fmt: skip


def configurations(stream_workers: tuple[int, ...]) -> list[dict]:
    """cache=ram without and with amp, then streaming with amp for each worker count."""
    return [
        {"cache": "ram", "amp": False, "workers": 0},
        {"cache": "ram", "amp": True, "workers": 0},
        *({"cache": "none", "amp": True, "workers": w} for w in stream_workers),
    ]


def ddp_runs(store: Path, work: Path, device: str, batches: dict[str, int]) -> dict:
    """``train run`` of each model under torchrun on 2 GPUs (the store's whole train split, ``--batch-size``
    as in the single-process runs); a note when fewer GPUs are here."""
    n_gpus = torch.cuda.device_count() if device == "cuda" else 0
    if n_gpus < 2:
        return {"skipped": f"{n_gpus} GPU(s) here: the 2-process DDP run needs 2"}
    results = {}
    for name in MODELS:
        out = work / f"ddp-{name}"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "training.cli", "run",
                   "--store", str(store), "--model", name, "--epochs", "1", "--batch-size", str(batches[name]),
                   "--device", "cuda", "--amp", "--cache", "ram", "--no-emissions", "--quiet",
                   "--out", str(out)]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=240)
        seconds = round(time.perf_counter() - started, 1)
        entry = {"command": " ".join(command[1:]), "rc": done.returncode, "wall_seconds": seconds}
        if done.returncode == 0 and (out / "history.csv").exists():
            entry["samples_per_s"] = round(float(pd.read_csv(out / "history.csv")["samples_per_s"].iloc[-1]), 1)
        else:
            entry["error_tail"] = (done.stderr or done.stdout)[-800:]
        results[name] = entry
    return results


def markdown(report: dict) -> str:
    store, env = report["store"], report["environment"]
    lines = [
        f"Run of {report['date']}, `python benchmarks/gpu_epoch.py {' '.join(report['argv'])}`: {env['device_name']}, "
        + f"{env['cpu_count']} cores, torch {env['torch']}. Store: {store['clips']} MTAT-like clips of "
        + f"{store['clip_seconds']} s ({store['unique_mp3s']} synthetic MP3s repeated) built in "
        + f"{store['build_seconds']} s on {store['workers']} workers ({store['clips_per_s']} clips/s). "
        + f"{report['steps']} timed steps after {report['warmup']} warm-up, each configuration.",
        "",
        "| model | amp | cache | workers | batch | steps | samples/s | data wait | peak GPU MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        memory = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:,}"
        lines.append(f"| {r['model']} | {'bf16' if r['amp'] else 'fp32'} | {r['cache']} | {r['workers']} | "
                     f"{r['batch_size']} | {r['steps']} | {r['samples_per_s']:,.1f} | {r['data_wait_fraction']:.1%} | "
                     f"{memory} |")  # fmt: skip
    lines += [f"| {s['model']} | {'bf16' if s['amp'] else 'fp32'} | {s['cache']} | {s['workers']} | skipped: "
              f"{report['budget_s']:g} s budget spent | | | | |" for s in report["skipped"]]  # fmt: skip
    ddp = report.get("ddp")
    if ddp is not None:
        lines += ["", f"DDP (2 processes): {ddp['skipped']}" if "skipped" in ddp else "DDP (2 processes, `train run` "
                  "under torchrun, one epoch of the train split, bf16, cache=ram):"]  # fmt: skip
        for name, entry in ({} if "skipped" in ddp else ddp).items():
            lines.append(f"- {name}: {entry.get('samples_per_s', 'failed')} samples/s (rc {entry['rc']}, "
                         f"{entry['wall_seconds']} s)")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up steps before each timed epoch")
    parser.add_argument("--clips", type=int, help="store rows (default: enough train clips for --steps of every model)")
    parser.add_argument("--batch-size", type=int, help="examples per step (default: each model's protocol)")
    parser.add_argument("--clip-seconds", type=float, help="stored clip length (default: the catalog's mtat clip)")
    parser.add_argument("--unique", type=int, default=64, help="distinct synthetic MP3s the rows repeat")
    parser.add_argument("--stream-workers", type=lambda text: tuple(int(w) for w in text.split(",")), default=(0, 4),
                        help="DataLoader worker counts of the streaming runs, e.g. 0,4")
    parser.add_argument("--build-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--budget-s", type=float, help="skip the configurations left after this many seconds")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the results when $OUT is unset")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()), help="folder for the audio and store")
    parser.add_argument("--smoke", action="store_true", help=f"the whole script on CPU, ~1 min: {' '.join(SMOKE)}")
    args = parser.parse_args(argv)
    if args.smoke:
        args = parser.parse_args([*SMOKE, *(sys.argv[1:] if argv is None else argv)])  # what is given wins
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit(f"--steps {args.steps} must be at least 1 and --warmup {args.warmup} at least 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; run --smoke (or --device cpu) instead")
    started = time.perf_counter()
    from training.models import get_model
    from training.run.config import TrainConfig

    batches = {name: args.batch_size or get_model(name).protocol.batch_size for name in MODELS}
    n_clips = args.clips or args.steps * max(batches.values()) + 2 * HOLDOUT
    for name in MODELS:  # before the build: a store too small for the steps is refused at once
        if n_clips - 2 * HOLDOUT < args.steps * batches[name]:
            raise SystemExit(f"--clips {n_clips} is too few: {name} needs {args.steps} x {batches[name]} train clips "
                             f"for --steps {args.steps}, plus {2 * HOLDOUT} held out")  # fmt: skip
    out = Path(os.environ.get("OUT") or args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "date": _dt.date.today().isoformat(), "argv": sys.argv[1:] if argv is None else argv,
        "steps": args.steps, "warmup": args.warmup, "budget_s": args.budget_s,
        "environment": {"device_name": torch.cuda.get_device_name() if args.device == "cuda" else "CPU",
                        "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": sys.version.split()[0]},
        "runs": [], "skipped": [],
    }  # fmt: skip

    def over_budget() -> bool:
        return args.budget_s is not None and time.perf_counter() - started > args.budget_s

    def save() -> None:
        (out / "gpu_epoch.json").write_text(json.dumps(report, indent=2))
        if "store" in report:  # a failed build leaves nothing to tabulate
            (out / "gpu_epoch.md").write_text(markdown(report))

    work = Path(tempfile.mkdtemp(prefix="muzarr_gpu_epoch_", dir=args.work))
    try:
        store = work / "mtat_like.zarr"
        report["store"] = build_store(store, work / "audio", n_clips=n_clips, unique=args.unique,
                                      workers=args.build_workers, seconds=args.clip_seconds)
        print(f"store: {report['store']}", flush=True)
        for name in MODELS:
            for i, setting in enumerate(configurations(args.stream_workers)):
                if over_budget():
                    report["skipped"].append({"model": name, **setting})
                    continue
                config = TrainConfig(
                    store=str(store), model=name, device=args.device, epochs=1, emissions=False,
                    batch_size=batches[name], max_clips=args.steps * batches[name], **setting,
                )  # fmt: skip
                result = timed_epoch(config, work / f"{name}-{i}", warmup=args.warmup)
                report["runs"].append(result)
                print(json.dumps(result), flush=True)
                save()
        spent = {"skipped": f"{args.budget_s:g} s budget spent"} if over_budget() else None
        report["ddp"] = spent or ddp_runs(store, work, args.device, batches)
    finally:
        report["wall_seconds"] = round(time.perf_counter() - started, 1)
        save()
        shutil.rmtree(work, ignore_errors=True)
    print(markdown(report))


if __name__ == "__main__":
    main()

"""Embedding throughput: clips/s of a MERT-95M-shaped encoder through muzarr's ``embedding`` feature, beside
MARBLE's extract loop, on the CPU and (when there is one) the GPU.

The model is a ``HubertModel`` of MERT-v1-95M's shapes with random weights (``HubertConfig()``'s defaults:
768 hidden, 12 layers, 3072 feed-forward, the 7-layer convolution stack, 94.4 M parameters), saved with
``save_pretrained`` beside a 24 kHz, ``do_normalize`` feature-extractor config as MERT-v1-95M's folder is.
Every path stores all 13 hidden states, mean-pooled, of 29.1 s (MTAT) clips cut into MERT's 5-second
windows (6 per clip: 5 of 5 s and one of 4.1 s). Measured, in one run:

1. ``forward``: the feature's own ``extract`` on audio already decoded and resampled to 24 kHz (the
   model's forward, the copy of its hidden states and the pooling), in the worker processes of the
   build's cluster, all working at once (CPU: one process per core, one thread each, as ``pipe build``
   runs; CUDA: the one worker per GPU ``pipe build --device cuda`` starts); each worker's model is loaded
   and warmed before the clock;
2. ``pipe build``: ``pipe build demo --embedding FOLDER,window_seconds=5 --only`` (its own code:
   ``config_from_command`` then ``build``) on the same warm cluster: decode, soxr to 24 kHz, forward,
   pooling and the store's writes. Its rate is the batch tasks' span (first start to last stop: the
   first-clip check, planning and finalising are once per build); its **data wait** is
   ``1 - F / B``, where ``F`` is (1)'s worker-seconds per clip and ``B`` the batch tasks' worker-seconds
   per clip, from Dask's task stream: the share of the workers' time spent outside the feature's
   ``extract`` (decoding, resampling, writing, scheduling). ``extract`` itself also copies every frame of
   every layer to the host and pools there: (4) shows what the model alone takes.
   Decode + resample alone is also timed in the workers (``load_clip``, the build's function), per format;
3. MARBLE's extract loop, as ``benchmark/models/musichubert_hf/extract_bert_features.py`` of
   a43992899/MARBLE-Benchmark runs it (:func:`marble_extract`): one process, one file at a time,
   ``torchaudio.load`` then ``torchaudio.transforms.Resample`` built for the file, the
   ``Wav2Vec2FeatureExtractor`` processor, one window at a time through the model under ``no_grad``, every
   layer mean-pooled per window, one ``.npy`` per file. Its data wait is the share of the loop outside the
   windows' forward passes. (MARBLE's MTT config gives the whole clip in one forward pass and its
   MTG configs 30-s windows; both paths here use the 5-s windows. Where ``torchaudio.load`` does not work,
   since 2.9 a wrapper of torchcodec, torchcodec is called as it would, else soundfile; where torchaudio
   does not import, :class:`SincResample` is its ``sinc_interp_hann`` resampler, ported.)
4. CUDA: windows per forward pass swept (``--sweep``), the model fed batches of 5-s windows from many
   clips with the hidden states pooled on the device: what batching across clips would give, beside
   muzarr's path today (the windows of one clip, 5 + 1 per forward, every frame copied to the host).

Before the clock, a check that MARBLE's loop and the feature compute the same thing: both on the same
24 kHz excerpt, MARBLE's per-window means averaged over windows against the feature's pooled output.

Hours for MTAT (25,863 clips of 29.1 s) and MTG-Jamendo top-50 (54,380 full tracks, 3,688.4 h of audio:
the DURATION column of split-0's top-50 train, validation and test files) are each rate applied to that
audio (the windows' cost is linear in audio length).

Results go to ``$OUT/embed_throughput.{json,md}`` when ``$OUT`` is set, else to ``--out DIR`` if given,
rewritten after each phase; the markdown table is printed at the end.

Usage:
  python benchmarks/embed_throughput.py --quick          # CPU only, a few minutes on 2 cores
  python benchmarks/embed_throughput.py                  # CPU, and CUDA when torch sees a GPU
  python benchmarks/embed_throughput.py --devices cuda --budget-s 240

On the device machine (python3 3.12 with torch, transformers, torchaudio; no dask, zarr, soundfile or
soxr): fetch the wheels once as ``benchmarks/gpu_epoch.py``'s docstring says (the same list), then call the
device tool's ``run`` with carry ``[".whl"]``, timeout_s 420 and::

  set -o pipefail; export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir -U --target /tmp/site .whl/*.whl || exit
  python3 benchmarks/embed_throughput.py --budget-s 240 --cpu-clips-per-worker 2 --cpu-forward-clips-per-worker 1 \\
    --quiet 2>&1 | tee $OUT/log.txt

``--budget-s`` skips the phases still to run once that many seconds have passed (CUDA's run first).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MTAT_CLIPS, MTAT_SECONDS = 25_863, 29.1
JAMENDO_TRACKS, JAMENDO_AUDIO_HOURS = 54_380, 3_688.4  # top-50, split-0 TSVs' DURATION summed (mean 244.2 s)
#: CPU-sized: one clip per worker through the feature, the demo store's smallest build, 2 MARBLE clips
QUICK = ("--devices", "cpu", "--cpu-clips-per-worker", "5", "--cpu-forward-clips-per-worker", "1", "--marble-clips", "2")
DEFAULT_SWEEP = (1, 5, 16, 32, 64)  # 5: the full windows of one clip, as the feature batches them


# -- the model ------------------------------------------------------------------------------------------


def save_mert95_shaped(folder: Path, *, seed: int = 0) -> Path:
    """A random-weight ``HubertModel`` of MERT-v1-95M's shapes, as MERT's folder holds it (24 kHz, normalised)."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    HubertModel(HubertConfig()).eval().save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=24000, do_normalize=True).save_pretrained(folder)
    return folder


def count_flops(model, lengths: list[int]) -> float:
    """Matmul and convolution FLOPs (torch's FlopCounterMode) of one forward pass per window in ``lengths``."""
    from torch.utils.flop_counter import FlopCounterMode

    each = {}
    with torch.no_grad():
        for n in sorted(set(lengths)):
            with FlopCounterMode(display=False) as counter:
                model(torch.zeros(1, n), output_hidden_states=True)
            each[n] = counter.get_total_flops()
    return float(sum(each[n] for n in lengths))


def forwards_per_clip(spans: list[tuple[int, int]], batch_size: int) -> str:
    """The forward passes the feature makes of one clip's windows (those of one length are batched): ``5+1``."""
    counts: dict[int, int] = {}
    for start, stop in spans:
        counts[stop - start] = counts.get(stop - start, 0) + 1
    sizes = [min(batch_size, n - k) for n in counts.values() for k in range(0, n, batch_size)]
    return "+".join(str(s) for s in sizes)


# -- MARBLE's extract loop, as it runs --------------------------------------------------------------------


class SincResample:
    """``torchaudio.transforms.Resample(orig, new)`` (``sinc_interp_hann``, ``lowpass_filter_width=6``,
    ``rolloff=0.99``), ported for where torchaudio does not import: the kernel built when constructed, one
    strided convolution per call."""

    def __init__(self, orig_freq: int, new_freq: int, *, lowpass_filter_width: int = 6, rolloff: float = 0.99):
        gcd = math.gcd(orig_freq, new_freq)
        self.orig, self.new = orig_freq // gcd, new_freq // gcd
        base = min(self.orig, self.new) * rolloff
        self.width = math.ceil(lowpass_filter_width * self.orig / base)
        idx = torch.arange(-self.width, self.width + self.orig, dtype=torch.float64)[None, None] / self.orig
        t = (torch.arange(0, -self.new, -1, dtype=torch.float64)[:, None, None] / self.new + idx) * base
        t = t.clamp(-lowpass_filter_width, lowpass_filter_width)
        window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
        t = t * math.pi
        sinc = torch.where(t == 0, torch.tensor(1.0, dtype=t.dtype), torch.sin(t) / t)
        self.kernel = (sinc * window * base / self.orig).to(torch.float32)

    def to(self, device):
        self.kernel = self.kernel.to(device)
        return self

    def __call__(self, waveform: torch.Tensor) -> torch.Tensor:
        shape = waveform.shape
        x = waveform.reshape(-1, shape[-1])
        n = x.shape[-1]
        x = torch.nn.functional.pad(x, (self.width, self.width + self.orig))
        y = torch.nn.functional.conv1d(x[:, None], self.kernel, stride=self.orig).transpose(1, 2).reshape(x.shape[0], -1)
        return y[..., : math.ceil(self.new * n / self.orig)].reshape(*shape[:-1], -1)


def marble_audio_tools(probe: str):
    """(name, load, Resample) as MARBLE's ``load_audio`` gets them here (see the module's docstring)."""
    try:
        import torchaudio

        resample, resampler_name = torchaudio.transforms.Resample, "torchaudio Resample"
    except Exception:  # noqa: BLE001 - not installed, or its wheel does not import beside this torch
        torchaudio, resample, resampler_name = None, SincResample, "torchaudio's sinc resampler, ported"
    if torchaudio is not None:
        try:
            torchaudio.load(probe)
            loads = True
        except Exception:  # noqa: BLE001 - 2.9+ without torchcodec
            loads = False
        if loads:
            return f"torchaudio.load, {resampler_name}", torchaudio.load, resample
    try:
        from torchcodec.decoders import AudioDecoder

        def load(path):
            samples = AudioDecoder(path).get_all_samples()
            return samples.data, samples.sample_rate

        return f"torchcodec (torchaudio.load's decoder), {resampler_name}", load, resample
    except ImportError:
        import soundfile

        def load(path):
            data, rate = soundfile.read(path, dtype="float32", always_2d=True)
            return torch.from_numpy(data.T.copy()), rate

        return f"soundfile, {resampler_name}", load, resample


class MarbleHuBERTFeature(torch.nn.Module):
    """MARBLE's ``HuBERTFeature`` wrapper (``hf_pretrains.py``): its processor, its model, its forward."""

    def __init__(self, pre_trained_folder, sample_rate, force_half=False, processor_normalize=True):
        super().__init__()
        from transformers import AutoModel, Wav2Vec2FeatureExtractor

        self.sample_rate = sample_rate
        self.processor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=sample_rate, padding_value=0.0,
                                                  return_attention_mask=True, do_normalize=processor_normalize)  # fmt: skip
        self.model = AutoModel.from_pretrained(pre_trained_folder)
        self.force_half = force_half
        self.model.eval()
        if self.force_half:
            self.model.half()
        for param in self.model.parameters():
            param.requires_grad = False

    @torch.no_grad()
    def process_wav(self, waveform):
        return self.processor(waveform, return_tensors="pt", sampling_rate=self.sample_rate, padding=True).input_values[0]

    def forward(self, input_values, layer=-1, reduction="mean"):
        if not self.force_half:
            out = self.model(input_values, output_hidden_states=True).hidden_states
        else:
            out = self.model(input_values.half(), output_hidden_states=True).hidden_states
            out = [o.float() for o in out]
        out = out[layer] if layer is not None else torch.stack(out)  # [L, B, T, H]
        if reduction == "mean":
            return out.mean(-2)
        if reduction == "max":
            return out.max(-2)[0]
        return out


def marble_windows(wav, target_sr: int, window_seconds: float, overlap_percent: float = 0.0) -> list:
    """MARBLE's sliding windows of ``wav`` ``[1, n]``: from the start, the last one dropped under 1 s."""
    overlap = window_seconds * overlap_percent / 100
    wavs = [wav[:, i : i + int(target_sr * window_seconds)]
            for i in range(0, wav.shape[-1], int(target_sr * (window_seconds - overlap)))]  # fmt: skip
    if wavs[-1].shape[-1] < target_sr * 1:
        wavs = wavs[:-1]
    return wavs


def marble_extract(audio_files: list[str], audio_dir: str, output_dir: str, *, feature_extractor, device, tools,
                   window_seconds: float, progress: bool) -> dict:  # fmt: skip
    """MARBLE's ``main`` loop over ``audio_files`` (``keep_folder_structure``, ``layer=None``, ``reduction=mean``);
    returns its seconds, and the seconds inside the windows' forward passes."""
    from tqdm import tqdm

    _, load, resample = tools
    target_sr = feature_extractor.sample_rate
    on_gpu = torch.device(device).type == "cuda"
    forward_s, shape, started, cpu = 0.0, None, time.perf_counter(), time.process_time()
    with torch.no_grad():
        for audio_file in tqdm(audio_files, desc="MARBLE extract", disable=not progress, leave=False):
            waveform, sample_rate = load(audio_file)  # load_audio: is_mono, no normalising, no crop
            if waveform.shape[0] > 1:
                waveform = torch.mean(waveform, dim=0, keepdim=True)
            if sample_rate != target_sr:
                resampler = resample(sample_rate, target_sr)
                waveform = resampler.to(device)(waveform.to(device))
            wav = feature_extractor.process_wav(waveform).to(device)
            before = time.perf_counter()
            features = [feature_extractor(w, layer=None, reduction="mean")
                        for w in marble_windows(wav, target_sr, window_seconds)]  # fmt: skip
            features = torch.cat(features, dim=1)
            if on_gpu:
                torch.cuda.synchronize()
            forward_s += time.perf_counter() - before
            output_file = os.path.join(output_dir, os.path.relpath(audio_file, audio_dir) + ".npy")
            os.makedirs(os.path.dirname(output_file), exist_ok=True)
            np.save(output_file, features.cpu().numpy())
            shape = list(features.shape)
    return {"seconds": time.perf_counter() - started, "forward_seconds": forward_s, "npy_shape": shape,
            "cpu_seconds": time.process_time() - cpu}  # fmt: skip


def same_work(feature, marble: MarbleHuBERTFeature, audio: np.ndarray) -> dict:
    """Both paths on ``audio`` (24 kHz, CPU, fp32): MARBLE's window means averaged against the feature's output."""
    ours = feature.extract(audio, sampling_rate=feature.sample_rate)  # [layer, dim]
    with torch.no_grad():
        wav = marble.process_wav(torch.from_numpy(audio)[None])
        theirs = torch.cat([marble(w, layer=None) for w in marble_windows(wav, feature.sample_rate, feature.window)], 1)
    theirs = theirs.mean(1).numpy()  # [layer, window, dim] -> [layer, dim]
    return {"max_abs_difference": float(np.abs(ours - theirs).max()), "max_abs_value": float(np.abs(theirs).max()),
            "seconds_of_audio": round(len(audio) / feature.sample_rate, 2)}  # fmt: skip


# -- muzarr's paths ---------------------------------------------------------------------------------------


def forward_task(feature, paths: list[str], policy, warm_seconds: float | None) -> dict:
    """In a worker: load and warm the model, then per clip decode + resample (``load_clip``) and ``extract``."""
    from pipeline.audio import load_clip

    rate = feature.sample_rate
    started = time.perf_counter()
    feature.backbone()  # once per worker process, as a build's first batch loads it
    loaded_s = time.perf_counter() - started
    first = load_clip(paths[0], rates=(rate,), policy=policy).audio[rate]
    feature.extract(first if warm_seconds is None else first[: int(warm_seconds * rate)], sampling_rate=rate)
    rows = []  # (format, decode + resample s, extract s, their CPU seconds on this thread)
    for path in paths:
        t0, c0 = time.perf_counter(), time.thread_time()
        audio = load_clip(path, rates=(rate,), policy=policy).audio[rate]
        t1, c1 = time.perf_counter(), time.thread_time()
        feature.extract(audio, sampling_rate=rate)  # returns host memory: the device's work is done
        t2, c2 = time.perf_counter(), time.thread_time()
        rows.append((Path(path).suffix.lstrip("."), t1 - t0, t2 - t1, c1 - c0, c2 - c1))
    return {"rows": rows, "threads": torch.get_num_threads(), "load_seconds": loaded_s}


def forward_in_workers(client, feature, paths: list[str], policy, *, per_worker: int, warm_seconds) -> dict:
    """:func:`forward_task` on every worker at once, ``per_worker`` clips each."""
    workers = sorted(client.scheduler_info()["workers"])
    futures = [client.submit(forward_task, feature, paths[i * per_worker : (i + 1) * per_worker], policy, warm_seconds,
                             workers=[w], allow_other_workers=False, pure=False)
               for i, w in enumerate(workers)]  # fmt: skip
    results = client.gather(futures)
    rows = [row for r in results for row in r["rows"]]
    forward = float(np.mean([r[2] for r in rows]))
    formats = sorted({r[0] for r in rows})
    decode = {ext: round(1000 * float(np.mean([r[1] for r in rows if r[0] == ext])), 1) for ext in formats}
    decode_cpu = {ext: round(1000 * float(np.mean([r[3] for r in rows if r[0] == ext])), 1) for ext in formats}
    return {"clips": len(rows), "worker_s_per_clip": forward, "cpu_s_per_clip": float(np.mean([r[4] for r in rows])),
            "decode_resample_cpu_ms": decode_cpu,
            "clips_per_s": len(workers) / forward,
            "decode_resample_ms": decode, "threads": results[0]["threads"],
            "model_load_s": round(max(r["load_seconds"] for r in results), 1)}  # fmt: skip


def demo_config(model: str, *, n_clips: int, batch_clips: int, clip_seconds: float, window: float, device: str, precision: str):
    """What ``pipe build demo --embedding ... --only --set ...`` parses, and that command."""
    from pipeline.config import config_from_command

    embedding = f"{model},window_seconds={window:g}" + ("" if precision == "float32" else f",precision={precision}")
    settings = (f"options.n_clips={n_clips}", f"options.seconds={clip_seconds:g}", f"clip.seconds={clip_seconds:g}",
                f"batch_clips={batch_clips}")  # fmt: skip
    config, _ = config_from_command("demo", embeddings=(embedding,), only=True, settings=settings,
                                    device="cuda" if device == "cuda" else None)  # fmt: skip
    command = f"pipe build demo --embedding {embedding} --only " + " ".join(f"--set {s}" for s in settings)
    return config, command + (" --device cuda" if device == "cuda" else "")


def batch_seconds(client) -> dict[str, float]:
    """Seconds the workers' threads have spent in build batch tasks (keys ``muzarr-batch-*``), on a CPU and
    off it: Dask's fine performance metrics, which each worker keeps per task prefix."""

    def read(dask_worker) -> dict[str, float]:
        out = {"thread-cpu": 0.0, "thread-noncpu": 0.0}
        for key, value in dask_worker.digests_total.items():  # ("execute", span, prefix, activity, unit)
            if isinstance(key, tuple) and len(key) >= 4 and key[0] == "execute" and key[-3] == "muzarr-batch" and key[-2] in out:
                out[key[-2]] += value
        return out

    per_worker = client.run(read)
    return {name: sum(seconds[name] for seconds in per_worker.values()) for name in ("thread-cpu", "thread-noncpu")}


def timed_build(client, config, *, source: str, out: str, progress: bool) -> dict:
    """``build`` on ``client``'s warm workers: its batch tasks' span (task stream), worker-seconds and CPU
    seconds per clip (fine metrics)."""
    from distributed import get_task_stream

    from pipeline.build import build, build_index

    index = build_index(config, source)
    before = batch_seconds(client)
    with get_task_stream(client) as stream:
        started = time.perf_counter()
        report = build(config, source=source, out=out, index=index, client=client, progress=progress)
        wall = time.perf_counter() - started
    if report.n_failed:
        raise SystemExit(f"the benchmark's build failed on {report.n_failed} clips: {report.failures[:2]}")
    after = batch_seconds(client)
    cpu, off = (after[k] - before[k] for k in ("thread-cpu", "thread-noncpu"))
    spans = [s for task in stream.data if str(task["key"]).startswith("muzarr-batch-")
             for s in task["startstops"] if s["action"] == "compute"]  # fmt: skip
    span = max(s["stop"] for s in spans) - min(s["start"] for s in spans)
    n = report.n_clips
    return {"clips": n, "build_wall_s": round(wall, 2), "batch_span_s": span, "worker_s_per_clip": (cpu + off) / n,
            "cpu_s_per_clip": cpu / n, "clips_per_s": n / span}  # fmt: skip


def sweep(feature, windows: np.ndarray, batches: tuple[int, ...], *, min_windows: int, clip_seconds: float) -> list[dict]:
    """The feature's model fed ``b`` windows per forward, hidden states mean-pooled on the device."""
    backbone = feature.backbone()
    model, device, dtype = backbone.model, backbone.device, backbone.dtype
    on_gpu = torch.device(device).type == "cuda"
    rows = []
    for b in batches:
        x = torch.as_tensor(windows[np.arange(b) % len(windows)]).to(device, dtype)

        def step(x=x):
            with torch.inference_mode():
                hidden = model(x, output_hidden_states=True).hidden_states
                return torch.stack(hidden, dim=1).mean(dim=2).float().cpu()  # [b, layer, dim]: a sync

        step()
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        repeats = max(2, math.ceil(min_windows / b))
        started = time.perf_counter()
        for _ in range(repeats):
            step()
        seconds = time.perf_counter() - started
        audio_s = repeats * b * windows.shape[1] / feature.sample_rate
        rows.append({"device": torch.device(device).type, "precision": feature.precision, "windows_per_forward": b,
                     "windows_per_s": round(repeats * b / seconds, 1), "clips_per_s": audio_s / seconds / clip_seconds,
                     "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if on_gpu else None})  # fmt: skip
    return rows


# -- the report -------------------------------------------------------------------------------------------


def hours(clips_per_s: float, clip_seconds: float) -> dict:
    """Hours to embed MTAT and MTG-Jamendo top-50 at ``clips_per_s`` clips of ``clip_seconds`` (cost ~ audio length)."""
    audio_per_s = clips_per_s * clip_seconds
    return {"mtat_h": MTAT_CLIPS * MTAT_SECONDS / audio_per_s / 3600, "jamendo_top50_h": JAMENDO_AUDIO_HOURS / audio_per_s}


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}" if x >= 10 else f"{x:.2f}" if x >= 0.1 else f"{x:.3f}"


def markdown(report: dict) -> str:
    env, model = report["environment"], report["model"]
    lines = [
        f"Run of {report['date']}, `python benchmarks/embed_throughput.py {' '.join(report['argv'])}`: "
        f"{env['cpu_count']} cores ({env['cpu']}), load average {env['load_before']} before the run"
        + (f" and {env['load_after']} after" if "load_after" in env else "")
        + (f", {env['gpu']}" if env.get("gpu") else "") + f"; torch {env['torch']}, transformers {env['transformers']}.",
        (f"Model: {model['name']} ({_num(model['parameters_m'])} M parameters, random weights), {model['sample_rate']} Hz, "
         f"{model['hidden_layers']} hidden states x {model['dim']}, mean-pooled; clips of {report['clip_seconds']} s in "
         f"{model['windows_per_clip']} windows of {model['window_seconds']:g} s, {_num(model['gflop_per_clip'])} GFLOP per "
         "clip (torch FlopCounterMode: matmuls and convolutions)."),
        "",
        ("| path | device | dtype | processes x threads | windows / forward | clips | clips/s | x real time | CPU s / clip | "
         "data wait | MTAT (h) | MTG-Jamendo top-50 (h) |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in report["rows"]:
        wait = "-" if r.get("data_wait") is None else f"{r['data_wait']:.1%}"
        cpu = _num(r["cpu_s_per_clip"]) if r["device"] == "cpu" else "-"
        lines.append(f"| {r['path']} | {r['device']} | {r['precision']} | {r['processes']} x {r['threads']} | {r['windows']} | "
                     f"{r['clips']} | {_num(r['clips_per_s'])} | {_num(r['clips_per_s'] * report['clip_seconds'])} | {cpu} | {wait} | "
                     f"{_num(r['mtat_h'])} | {_num(r['jamendo_top50_h'])} |")  # fmt: skip
    lines += [f"| {s} | skipped: {report['budget_s']:g} s budget spent | | | | | | | | | | |" for s in report["skipped"]]
    for r in report["rows"]:
        if r.get("decode_resample_ms"):
            per = ", ".join(f"{ext.upper()} {ms} ms ({r['decode_resample_cpu_ms'][ext]} ms CPU)"
                            for ext, ms in r["decode_resample_ms"].items())  # fmt: skip
            lines.append(f"\nDecode + soxr to {model['sample_rate']} Hz per clip in the {r['device']} workers: {per}.")
            break
    if report["sweep"]:
        lines += ["", "Windows per forward pass, the model alone (hidden states mean-pooled on the device):", "",
                  "| device | dtype | windows / forward | windows/s | clips/s equivalent | peak GPU MiB |", "|---|---|---|---|---|---|"]  # fmt: skip
        for s in report["sweep"]:
            peak = "-" if s["peak_gpu_mib"] is None else f"{s['peak_gpu_mib']:,}"
            lines.append(f"| {s['device']} | {s['precision']} | {s['windows_per_forward']} | {_num(s['windows_per_s'])} | "
                         f"{_num(s['clips_per_s'])} | {peak} |")  # fmt: skip
    check = report.get("check")
    if check:
        lines += ["", (f"Same work: on a {check['seconds_of_audio']} s excerpt, MARBLE's window means averaged differ from "
                       f"the feature's by at most {check['max_abs_difference']:.2e} (values up to "
                       f"{check['max_abs_value']:.2f}). MARBLE's audio: {report['marble_audio']}.")]  # fmt: skip
    return "\n".join(lines) + "\n"


def environment() -> dict:
    import platform

    import transformers

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass  # not Linux: platform's word
    env = {"cpu_count": os.cpu_count(), "cpu": cpu, "load_before": round(os.getloadavg()[0], 1),
           "torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0]}  # fmt: skip
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        # fp32 matmuls without TF32 unless asked (torch's default), convolutions with it (cuDNN's)
        env["fp32"] = {"matmul_precision": torch.get_float32_matmul_precision(),
                       "cudnn_tf32": getattr(torch.backends.cudnn, "allow_tf32", None)}  # fmt: skip
    return env


def csv(kind):
    return lambda text: tuple(kind(x) for x in text.split(",") if x)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--devices", type=csv(str), default=("cuda", "cpu") if cuda else ("cpu",),
                        help="cpu and/or cuda (default: cuda first when torch sees a GPU, then cpu)")
    parser.add_argument("--model", help="an encoder folder to measure instead of the MERT-95M-shaped one saved here")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="CPU worker processes (one thread each)")
    parser.add_argument("--cpu-clips-per-worker", type=int, default=10, help="clips each CPU worker builds (the demo recipe needs 10 in all)")
    parser.add_argument("--cpu-forward-clips-per-worker", type=int, default=2, help="clips each CPU worker runs through extract")
    parser.add_argument("--cpu-precisions", type=csv(str), default=("float32",))
    parser.add_argument("--cuda-clips", type=int, default=96, help="clips built, and run through extract, on the GPU")
    parser.add_argument("--cuda-precisions", type=csv(str), default=("float32", "bfloat16"))
    parser.add_argument("--marble-clips", type=int, help="clips through MARBLE's loop (default: 8 on CPU, 32 on CUDA)")
    parser.add_argument("--marble-half", type=csv(str), default=("cuda",), help="devices where MARBLE's force_half runs too")
    parser.add_argument("--sweep", type=csv(int), default=DEFAULT_SWEEP, help="windows per forward pass to sweep, e.g. 1,6,16")
    parser.add_argument("--sweep-devices", type=csv(str), default=("cuda",))
    parser.add_argument("--sweep-windows", type=int, default=384, help="windows each sweep point runs at least")
    parser.add_argument("--clip-seconds", type=float, default=MTAT_SECONDS)
    parser.add_argument("--window-seconds", type=float, default=5.0)
    parser.add_argument("--budget-s", type=float, help="skip the phases left after this many seconds")
    parser.add_argument("--out", type=Path, help="folder for the JSON and markdown when $OUT is unset")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()), help="folder for the model, audio and stores")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--quick", action="store_true", help=f"CPU only, a few minutes: {' '.join(QUICK)}")
    args = parser.parse_args(argv)
    if args.quick:
        args = parser.parse_args([*QUICK, *(sys.argv[1:] if argv is None else argv)])  # what is given wins
    unknown = sorted(set(args.devices) - {"cpu", "cuda"})
    if unknown:
        parser.exit(2, f"--devices {','.join(args.devices)}: {unknown[0]} is not cpu or cuda\n")
    if "cuda" in args.devices and not cuda:
        parser.exit(2, "--devices cuda: torch sees no CUDA GPU here; run with --devices cpu (or --quick)\n")
    if args.model and not (Path(args.model) / "config.json").is_file():
        parser.exit(2, f"--model {args.model}: no config.json there; give a folder save_pretrained wrote\n")
    if not 1 <= args.clip_seconds <= 60 or not 0 < args.window_seconds:
        parser.exit(2, f"--clip-seconds {args.clip_seconds:g} must be 1 to 60 (the demo recipe's range) and "
                       f"--window-seconds {args.window_seconds:g} positive\n")  # fmt: skip
    if args.cuda_clips < 10 and "cuda" in args.devices:
        parser.exit(2, f"--cuda-clips {args.cuda_clips} is under the demo recipe's 10 clips\n")
    if args.workers * args.cpu_clips_per_worker < 10 and "cpu" in args.devices:
        parser.exit(2, f"--workers {args.workers} x --cpu-clips-per-worker {args.cpu_clips_per_worker} is under the demo "
                       "recipe's 10 clips: give more clips per worker\n")  # fmt: skip
    return args


class Bench:
    """One run: its arguments, the model and audio it made, the report it writes after each phase."""

    def __init__(self, args: argparse.Namespace, argv: list[str], work: Path) -> None:
        from pipeline.features.embedding import Embedding

        self.args, self.work, self.started = args, work, time.perf_counter()
        self.out = os.environ.get("OUT") or args.out
        self.report = {"date": _dt.date.today().isoformat(), "argv": argv, "environment": environment(),
                       "clip_seconds": args.clip_seconds, "budget_s": args.budget_s, "rows": [], "sweep": [],
                       "skipped": []}  # fmt: skip
        self.folder = Path(args.model).resolve() if args.model else save_mert95_shaped(work / "mert95-shaped")
        self.feature = Embedding(model=str(self.folder), window_seconds=args.window_seconds)  # CPU, fp32
        self.rate = self.feature.sample_rate
        self.spans = self.feature.windows(int(args.clip_seconds * self.rate))
        first, last = self.spans[0], self.spans[-1]
        # a first and a last window: both window lengths of a clip (the check, the CPU workers' warm-up)
        self.excerpt_n = first[1] + (last[1] - last[0]) if len(self.spans) > 1 else first[1]
        self.marble = MarbleHuBERTFeature(str(self.folder), self.rate)  # CPU, fp32
        self.tools = None
        self.report["model"] = {
            "name": self.folder.name if args.model else "HuBERT of MERT-v1-95M's shape",
            "parameters_m": sum(p.numel() for p in self.marble.model.parameters()) / 1e6,
            "sample_rate": self.rate, "hidden_layers": self.feature.hidden_layers, "dim": self.feature.dim,
            "window_seconds": args.window_seconds, "windows_per_clip": len(self.spans),
            "gflop_per_clip": count_flops(self.marble.model, [b - a for a, b in self.spans]) / 1e9,
        }  # fmt: skip

    def save(self) -> None:
        if self.out:
            Path(self.out).mkdir(parents=True, exist_ok=True)
            (Path(self.out) / "embed_throughput.json").write_text(json.dumps(self.report, indent=2))
            (Path(self.out) / "embed_throughput.md").write_text(markdown(self.report))

    def spent(self, what: str) -> bool:
        """Past ``--budget-s``: ``what`` is recorded as skipped."""
        if self.args.budget_s is not None and time.perf_counter() - self.started > self.args.budget_s:
            self.report["skipped"].append(what)
            return True
        return False

    def add(self, row: dict) -> None:
        row.update(hours(row["clips_per_s"], self.args.clip_seconds))
        self.report["rows"].append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        self.save()

    def config(self, device: str, precision: str, n_clips: int, workers: int):
        return demo_config(str(self.folder), n_clips=n_clips, batch_clips=max(1, min(16, n_clips // workers)),
                           clip_seconds=self.args.clip_seconds, window=self.args.window_seconds, device=device,
                           precision=precision)  # fmt: skip

    def check(self, path: str, policy) -> None:
        """Before any clock: MARBLE's loop and the feature compute the same thing."""
        from pipeline.audio import load_clip

        self.tools = marble_audio_tools(path)
        self.report["marble_audio"] = self.tools[0]
        excerpt = load_clip(path, rates=(self.rate,), policy=policy).audio[self.rate][: self.excerpt_n]
        self.report["check"] = same_work(self.feature, self.marble, excerpt)
        print(f"same work: {self.report['check']}", flush=True)

    def muzarr(self, device: str, source: Path, paths: list[str], workers: int, precisions: tuple[str, ...]) -> None:
        """The feature in the workers, then ``pipe build``, per precision, on one warm cluster."""
        from pipeline.cluster import close_client, make_client

        client = make_client(workers=workers)
        try:
            for precision in precisions:
                if self.spent(f"{device} {precision}: muzarr"):
                    return
                config, command = self.config(device, precision, len(paths), workers)
                feature = next(f for f in config.features if f.kind == "embedding")
                per_worker = self.args.cpu_forward_clips_per_worker if device == "cpu" else len(paths) // workers
                warm = None if device == "cuda" else self.excerpt_n / self.rate  # a whole clip on the GPU
                base = {"device": device, "precision": precision, "processes": workers,
                        "windows": forwards_per_clip(self.spans, feature.batch_size)}  # fmt: skip
                forward = forward_in_workers(client, feature, paths, config.clip, per_worker=per_worker, warm_seconds=warm)
                self.add({"path": "muzarr: feature extract, in-memory audio", **base, "threads": forward["threads"], **forward})
                if self.spent(f"{device} {precision}: pipe build"):
                    return
                print(f"{command} --workers {workers}", flush=True)
                store = self.work / f"{device}-{precision}.zarr"
                built = timed_build(client, config, source=str(source), out=str(store), progress=not self.args.quiet)
                waits = {f"data_wait_{t}": 1 - forward[f"{t}_s_per_clip"] / built[f"{t}_s_per_clip"] for t in ("worker", "cpu")}
                # a shared CPU's load swings between the two phases: CPU seconds hold still; a GPU's time is wall time
                wait = waits["data_wait_cpu" if device == "cpu" else "data_wait_worker"]
                self.add({"path": "muzarr: pipe build demo --embedding", **base, "threads": forward["threads"], **built,
                          **waits, "data_wait": wait, "command": command})  # fmt: skip
                shutil.rmtree(store, ignore_errors=True)
        finally:
            close_client(client)

    def marble_loop(self, device: str, source: Path, paths: list[str]) -> None:
        """MARBLE's extract loop in fp32, and with its force_half where ``--marble-half`` names the device."""
        on = "cuda:0" if device == "cuda" else "cpu"
        files = sorted(paths)[: self.args.marble_clips or (8 if device == "cpu" else 32)]
        for half in (False, True) if device in self.args.marble_half else (False,):
            if self.spent(f"{device}: MARBLE{' force_half' if half else ''}"):
                return
            reuse = device == "cpu" and not half  # the check's model: already warm
            marble = self.marble if reuse else MarbleHuBERTFeature(str(self.folder), self.rate, force_half=half).to(on)
            npy = self.work / f"marble-{device}-{half}"
            run = {"feature_extractor": marble, "device": on, "tools": self.tools, "window_seconds": self.args.window_seconds}
            if not reuse:  # one file first, untimed: first calls' set-up is once per run
                marble_extract(files[:1], str(source), str(npy), progress=False, **run)
            timing = marble_extract(files, str(source), str(npy), progress=not self.args.quiet, **run)
            self.add({"path": "MARBLE extract loop", "device": device, "precision": "float16 (force_half)" if half else "float32",
                      "processes": 1, "threads": torch.get_num_threads(), "windows": "1", "clips": len(files),
                      "clips_per_s": len(files) / timing["seconds"], "data_wait": 1 - timing["forward_seconds"] / timing["seconds"],
                      "seconds": round(timing["seconds"], 2), "npy_shape": timing["npy_shape"],
                      "cpu_s_per_clip": timing["cpu_seconds"] / len(files)})  # fmt: skip
            shutil.rmtree(npy, ignore_errors=True)

    def sweep(self, device: str, paths: list[str], policy, precisions: tuple[str, ...]) -> None:
        """Windows per forward pass: full windows of the first clips, each clip normalised as the feature does."""
        from pipeline.audio import load_clip
        from pipeline.features.embedding import Embedding

        windows = []
        for path in paths[:4]:
            audio = load_clip(path, rates=(self.rate,), policy=policy).audio[self.rate]
            audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
            windows += [audio[a:b] for a, b in self.spans if b - a == self.spans[0][1]]
        for precision in precisions:
            if self.spent(f"{device} {precision}: sweep"):
                return
            feature = Embedding(model=str(self.folder), window_seconds=self.args.window_seconds, device=device,
                                precision=precision)  # fmt: skip
            rows = sweep(feature, np.stack(windows), self.args.sweep, min_windows=self.args.sweep_windows,
                         clip_seconds=self.args.clip_seconds)  # fmt: skip
            self.report["sweep"] += rows
            print(json.dumps(rows), flush=True)
            self.save()

    def device(self, device: str) -> None:
        """Every phase on ``device``: its demo clips (synthesised once), muzarr, MARBLE, the sweep."""
        from pipeline.build import build_index

        args = self.args
        workers = args.workers if device == "cpu" else torch.cuda.device_count()  # pipe build: one worker per GPU
        n_clips = workers * args.cpu_clips_per_worker if device == "cpu" else args.cuda_clips
        precisions = args.cpu_precisions if device == "cpu" else args.cuda_precisions
        source = self.work / f"demo-{n_clips}"
        config, _ = self.config(device, "float32", n_clips, workers)
        paths = build_index(config, str(source)).audio_paths()
        if self.tools is None:
            self.check(paths[0], config.clip)
        if not self.spent(f"{device}: muzarr"):
            self.muzarr(device, source, paths, workers, precisions)
        self.marble_loop(device, source, paths)
        if device in args.sweep_devices and args.sweep:
            self.sweep(device, paths, config.clip, precisions)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # transformers' loading bars, not ours
    work = Path(tempfile.mkdtemp(prefix="muzarr_embed_", dir=args.work))
    bench = None
    try:
        bench = Bench(args, sys.argv[1:] if argv is None else argv, work)
        for device in args.devices:
            bench.device(device)
    finally:
        if bench is not None:
            bench.report["wall_seconds"] = round(time.perf_counter() - bench.started, 1)
            bench.report["environment"]["load_after"] = round(os.getloadavg()[0], 1)
            bench.save()
        shutil.rmtree(work, ignore_errors=True)
    print(markdown(bench.report), end="")


if __name__ == "__main__":
    main()

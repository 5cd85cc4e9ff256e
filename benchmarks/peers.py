"""muzarr beside Hugging Face datasets, lhotse, WebDataset and LitData, on the same files (issue #24).

One run, the same 2 cores, the same files:

- the MTAT-like set of ``build_throughput.py`` (``--clips`` MP3s of 29.1 s at 16 kHz, made by ``_synth.py``),
  stored by every peer as muzarr's MTAT entry stores it: the 16 kHz waveform (clips of 29.12 s) and the
  96-mel log-mel at 12 kHz (n_fft 512, hop 256, 37 zero frames each side);
- the whole-track set of ``loader_throughput.py --tracks`` (WAV files of 30 s to 10 min), waveforms only.

Each peer is written as its own documentation recommends (the pages followed are cited in
``_peers.py`` and ``_peer_lhotse.py``), and what it stored is read back through its own API and checked
against muzarr's store: waveforms within one int16 step, log-mels within one float16 step at the array's
largest magnitude (a peer that stores something else is not comparable: the run stops, except for
lhotse's log-mel, whose difference is by lhotse's design and is reported, not compared).

Measured, each build and each reader in its own process (so peak RSS is the reader's own), rounds
interleaved and each round starting one peer later, medians and medians of per-round ratios:

- build: wall seconds of the whole command (``pipe build`` or the peer's script: interpreter, imports,
  workers, decode, resample, log-mel, stored, ready to train), ``--workers`` processes each;
- reads: shuffled random crops (59,049 samples of waveform, 188 frames of log-mel), batches of 32 float32,
  whole epochs for ``--min-seconds`` after an untimed one, new crops every epoch (``loader_throughput``'s
  ``epoch_rate``); the time to the first batch from opening the dataset; peak RSS; resume: the time to the
  first batch of an epoch continued from its middle (the peer's own state where it has one, else reading
  the epoch up to there);
- bytes on disk.

Usage: python benchmarks/peers.py [--clips 320] [--tracks 48] [--rounds 3] [--build-rounds 2]
                                  [--workers 2] [--min-seconds 3] [--quick] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synth import make_mtat_like
from loader_throughput import MEL_CROP, WAVE_CROP, epoch_rate, folder_bytes, make_track_store

BUILDERS = ["muzarr", "datasets", "datasets (torchcodec)", "lhotse", "WebDataset", "LitData"]
READERS = ["muzarr", "muzarr --no-verify-reads", "datasets", "lhotse", "lhotse Shar", "WebDataset", "LitData"]
SHUFFLE = {
    "muzarr": "shards permuted, buffer of 256 clips",
    "muzarr --no-verify-reads": "the same; chunks not checked",
    "datasets": "true (a permutation)",
    "lhotse": "true (a permutation)",
    "lhotse Shar": "approximate: shards permuted, sampler buffer",
    "WebDataset": "approximate: shards permuted, buffer of 1,000",
    "LitData": "chunks permuted, items within them",
}
# what a peer stores differently by its own design: reported, not compared (docs/benchmarks.md, "Peers")
REPORTED_ONLY = {
    ("lhotse", "mel"): "of lhotse's own 12 kHz resampling (not soxr's), stored by lossy lilcom",
    ("lhotse Shar", "mel"): "of lhotse's own 12 kHz resampling (not soxr's), stored by lossy lilcom",
    ("datasets (torchcodec)", "mel"): "of FFmpeg's MP3 decoder (torchcodec), not libsndfile's",
}


CROPS = {"wave": WAVE_CROP, "mel": MEL_CROP}
MUZARR_FEATURES = ["--waveform", "sample_rate=16000",
                   "--logmel", "sample_rate=12000,n_mels=96,n_fft=512,hop_length=256,pad_frames=37", "--only"]  # fmt: skip


def folder_of(work: Path, peer: str) -> Path:
    """Where a peer's build lives (lhotse's Shar export beside its manifests)."""
    name = peer.split()[0]
    return work / (name + "_torchcodec" if "torchcodec" in peer else name)


def child(job: dict) -> dict:
    """Run one job in this (fresh) process and return what it measured."""
    import resource

    import _peers
    import torch

    spec = _peers.SetSpec(job["audio"], job["seconds"])
    out = Path(job["out"])
    if job["task"] == "build":
        paths = sorted(str(p) for p in Path(job["audio"]).rglob("*.mp3" if spec.seconds else "*.wav"))
        started = time.perf_counter()
        _peers.BUILDS[job["peer"]](paths, out, spec, job["workers"])
        return {"seconds": time.perf_counter() - started}
    if job["task"] == "check":
        return check(job["peer"], out, Path(job["muzarr"]), spec)
    torch.set_num_threads(1)  # every reader alike: one thread, as in a loader worker
    column, length = job["column"], CROPS[job["column"]]
    started = time.perf_counter()
    reader = _peers.open_reader(job["peer"], out, column, length)
    next(iter(reader.epoch(10_000)))
    first = time.perf_counter() - started
    epochs = iter(range(10**6))
    rate = epoch_rate(lambda: reader.epoch(next(epochs)), job["min_seconds"])
    half = job["batches"] // 2
    if reader.resumable:
        state = reader.state(20_000, half)
        started = time.perf_counter()
        next(iter(reader.resume(state)))
    else:  # nothing to restore: read the epoch up to the middle
        started = time.perf_counter()
        batches = iter(reader.epoch(20_000))
        for _ in range(half + 1):
            next(batches)
    resume = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rate": rate, "first": first, "resume": resume, "resumable": reader.resumable, "rss_mb": rss}


def check(peer: str, folder: Path, muzarr: Path, spec) -> dict:
    """Compare what ``peer`` stored with muzarr's store, clip by clip (clip ids: the file names)."""
    import _peers

    from pipeline import open_store

    store = open_store(str(muzarr))
    ids = [Path(p).stem for p in store.clips["path"]]
    report = {}
    columns = {"wave": "waveform"}
    if spec.seconds is not None:
        columns["mel"] = next(a for a in store.arrays if a.startswith("logmel/"))
    for column, name in columns.items():
        stored = _peers.stored_arrays(peer, folder, column)
        if sorted(stored) != sorted(ids):
            return {column: {"ok": False, "why": f"{len(stored)} items stored for {len(ids)} clips"}}
        worst, over, n, example = 0.0, 0, 0, None
        for row, key in enumerate(ids):
            ref = store.track(name, row) if store.arrays[name].extents else store.array(name)[row]
            diff, tol, ref = difference(np.asarray(stored[key]), ref)
            beyond = np.abs(diff) > tol
            if beyond.any() and example is None:
                at = np.unravel_index(np.argmax(np.abs(diff) * beyond), diff.shape)
                example = f"{key} at {tuple(int(i) for i in at)}: muzarr {ref[at]:.6g}, off by {diff[at]:.3g}"
            worst, over, n = max(worst, float(np.abs(diff).max())), over + int(beyond.sum()), n + diff.size
        what = "one int16 step" if column == "wave" else "two float16 steps"
        report[column] = {"ok": over == 0, "max_diff": worst, "tolerance": what, "over": over / n, "over_n": over, "compared": n,
                          "example": example}
    return report


def difference(peer: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray | float, np.ndarray]:
    """``peer - ref`` where both hold values, the tolerance and ``ref`` as compared (float, aligned): one
    int16 step for waveforms (two MP3 decoders, libsndfile's mpg123 and FFmpeg's, agree to ~2e-6); two
    float16 steps at each log-mel value (each side rounds to float16 on its own: half a step each, and
    the two decoders' ~2e-6 moves a few quiet values by up to a step more). A peer that keeps a clip at its own length (lhotse) is compared
    where it has samples, and muzarr's padding beyond must be zeros; a log-mel without muzarr's zero
    frames is aligned past them."""
    if ref.dtype == np.int16:
        ref = ref.astype(np.float32) / 32768
        peer = peer.astype(np.float32) / (32768 if np.issubdtype(peer.dtype, np.integer) else 1)
        n = min(len(peer), len(ref))
        pad = np.abs(ref[n:]).max(initial=0.0) if len(peer) <= len(ref) else np.inf
        diff = peer[:n] - ref[:n]
        return (np.append(diff, pad) if pad else diff), 1.01 / 32768, np.append(ref[:n], 0.0) if pad else ref[:n]
    ref = ref.astype(np.float32)
    peer = peer.astype(np.float32)
    if peer.shape != ref.shape:  # lhotse: no zero frames, its own frame count
        from _peers import PAD

        ref = ref[:, PAD : PAD + peer.shape[1]]
    step = np.spacing(np.maximum(np.abs(ref), np.abs(peer)).astype(np.float16)).astype(np.float32)
    # near 0 dB a float16 step is finer than two float32 log-mels agree (muzarr's and librosa's: < 1e-4 dB)
    return peer - ref, np.maximum(2.001 * step, 1e-3), ref


def spawn(jobs: list[dict], timeout: float = 3600) -> tuple[list[dict], float]:
    """``jobs`` in one fresh Python process (``pipe build`` itself for muzarr's build): their results and
    the process's wall seconds. Measured jobs run one per process; ``--smoke`` groups them (it checks,
    it does not measure: each process pays its interpreter and torch import)."""
    job = jobs[0]
    if job["peer"] == "muzarr" and job["task"] == "build":
        command = [str(Path(sys.executable).with_name("pipe")), "build", "folder", "--source", job["audio"],
                   "--out", job["out"], "--workers", str(job["workers"]), "--quiet",
                   "--set", "clip.mode=full", "--set", f"clip.seconds={job['seconds']}", "--set", "batch_clips=16",
                   *MUZARR_FEATURES]  # fmt: skip
    else:
        command = [sys.executable, __file__, "--child", json.dumps(jobs)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{job['task']} of {job['peer']} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    if command[0].endswith("pipe"):  # its report line gives the build's own time (cluster start included)
        report = re.search(r", ([0-9.]+) s, [0-9.]+ clips/s\)", done.stdout)
        return [{"seconds": float(report[1])} if report else {}], wall
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    return (json.loads(lines[-1][7:]) if lines else [{}]), wall


def spawn_each(jobs: list[dict], together: bool) -> list[tuple[dict, float]]:
    """Each job in a process of its own (``together``: the jobs other than ``pipe build`` in one process)."""
    if not together:
        return [(result[0], wall) for result, wall in (spawn([job]) for job in jobs)]
    alone = [i for i, job in enumerate(jobs) if job["peer"] == "muzarr" and job["task"] == "build"]
    out: list = [None] * len(jobs)
    for i in alone:
        results, wall = spawn([jobs[i]])
        out[i] = (results[0], wall)
    rest = [i for i in range(len(jobs)) if i not in alone]
    if rest:
        results, wall = spawn([jobs[i] for i in rest])
        for i, result in zip(rest, results):
            out[i] = (result, wall)
    return out


def rotated(names: list[str], k: int) -> list[str]:
    return names[k % len(names) :] + names[: k % len(names)]


def ratio(runs: dict, a: str, b: str, key: str) -> float:
    """Median over rounds of ``a``'s figure over ``b``'s (within a round: the same spell of the machine)."""
    return float(np.median(np.array(runs[a][key]) / np.array(runs[b][key])))


def builds(args, audio: Path, work: Path, seconds: float | None, rounds: int, peers: list[str]) -> dict:
    """Each peer's build, ``rounds`` times interleaved; the last round's output is kept in ``work/<peer>``."""
    runs = {peer: {"wall": [], "work": []} for peer in peers}
    for r in range(rounds):
        order = rotated(peers, r)
        jobs = []
        for peer in order:
            shutil.rmtree(folder_of(work, peer), ignore_errors=True)
            jobs.append({"task": "build", "peer": peer, "audio": str(audio), "seconds": seconds,
                         "out": str(folder_of(work, peer)), "workers": args.workers})  # fmt: skip
        for peer, (result, wall) in zip(order, spawn_each(jobs, args.smoke)):
            wall = result.get("seconds", wall) if args.smoke and peer != "muzarr" else wall  # grouped: the job's own
            runs[peer]["wall"].append(wall)
            runs[peer]["work"].append(result.get("seconds", wall))
            print(f"  build round {r + 1}: {peer} {wall:.1f} s", flush=True)
    return runs


def checks(args, work: Path, muzarr: Path, audio: Path, seconds, peers: list[str]) -> dict:
    jobs = [{"task": "check", "peer": peer, "audio": str(audio), "seconds": seconds, "muzarr": str(muzarr),
             "out": str(folder_of(work, peer))} for peer in peers]  # fmt: skip
    results = {peer: result for peer, (result, _) in zip(peers, spawn_each(jobs, args.smoke))}
    different = []
    for peer in peers:
        for column, r in results[peer].items():
            verdict = "equal" if r["ok"] else "DIFFERS"
            detail = r.get("why") or (f"{r['compared']:,} values, max |diff| {r['max_diff']:.3g}, {r['over_n']:,} "
                                      f"({r['over']:.3%}) beyond {r['tolerance']}" + (f"; e.g. {r['example']}" if r["example"] else ""))  # fmt: skip
            print(f"check {peer} {'waveform' if column == 'wave' else 'log-mel'}: {verdict} to muzarr's store ({detail})")
            if not r["ok"] and (peer, column) in REPORTED_ONLY:
                print(f"  {peer}'s log-mel is {REPORTED_ONLY[peer, column]}: reported, not compared with muzarr's")
            elif not r["ok"]:
                different.append(peer)
    if different:  # the run goes on (its other rows stand); it ends with exit status 1
        print(f"NOT COMPARABLE: {', '.join(different)} stored something else than muzarr")
        args.failed = True
    return results


def reads(args, work: Path, audio: Path, seconds, columns: list[str], n_items: int, peers: list[str]) -> dict:
    runs = {(peer, c): {"rate": [], "first": [], "resume": [], "rss_mb": [], "resumable": []} for peer in peers for c in columns}
    for r in range(args.rounds):
        order = rotated([(peer, c) for c in columns for peer in peers], r)
        jobs = [{"task": "read", "peer": peer, "column": column, "audio": str(audio), "seconds": seconds,
                 "out": str(folder_of(work, peer)),
                 "min_seconds": args.min_seconds, "batches": -(-n_items // 32)} for peer, column in order]  # fmt: skip
        for key, (result, _) in zip(order, spawn_each(jobs, args.smoke)):
            for name, value in result.items():
                runs[key][name].append(value)
        print(f"  read round {r + 1} done", flush=True)
    return runs


def read_table(title: str, runs: dict, column: str, peers: list[str]) -> None:
    print(f"\n{title}\n\n| peer | shuffle | samples/s (median) | rounds | muzarr vs it | first batch (s) | resume mid-epoch (s) "
          "| peak RSS (MB) |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for peer in peers:
        r = runs[(peer, column)]
        spread = ", ".join(f"{v:,.0f}" for v in r["rate"])
        how = "state" if r["resumable"][0] else "re-read"
        print(f"| {peer} | {SHUFFLE[peer]} | {np.median(r['rate']):,.0f} | {spread} | "
              f"{float(np.median(np.array(runs[('muzarr', column)]['rate']) / np.array(r['rate']))):.2f}x | "
              f"{np.median(r['first']):.2f} | {np.median(r['resume']):.2f} ({how}) | {np.median(r['rss_mb']):,.0f} |")  # fmt: skip


def sizes(work: Path, audio: Path, peers: list[str]) -> None:
    print("\n| peer | what is on disk | bytes |\n|---|---|---|")
    for peer in peers:
        if peer == "lhotse":
            parts = {"manifests + lilcom log-mels (waveform: the source files)": [work / "lhotse" / n for n in ("cuts16.jsonl.gz", "cuts12.jsonl.gz", "feats")],
                     "Shar: FLAC + lilcom": [work / "lhotse" / "shar16", work / "lhotse" / "shar12"]}  # fmt: skip
        else:
            parts = {"everything": [work / peer]}
        for what, paths in parts.items():
            total = sum(folder_bytes(p) if p.is_dir() else p.stat().st_size for p in paths if p.exists())
            print(f"| {peer} | {what} | {total:,} |")
    sources = sum(p.stat().st_size for p in audio.rglob("*") if p.suffix in (".mp3", ".wav"))
    print(f"| (the source audio) | MP3/WAV files | {sources:,} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=320)
    parser.add_argument("--tracks", type=int, default=48, help="whole tracks of 30 s to 10 min (0: skip that set)")
    parser.add_argument("--rounds", type=int, default=3, help="read rounds (median reported)")
    parser.add_argument("--build-rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="processes of every build")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="each read measurement: whole epochs for this long")
    parser.add_argument("--data", type=Path, help="folder of the MP3s (default: build_throughput.py's for 320 clips)")
    parser.add_argument("--quick", action="store_true", help="160 clips, 16 tracks, 2 read rounds, 1 build round")
    parser.add_argument("--smoke", action="store_true", help="8 clips of 4 s, no tracks, one round: checks every peer")
    parser.add_argument("--work", type=Path, help="folder for the builds (default: a new temporary one); emptied at the end")
    parser.add_argument("--keep", action="store_true", help="keep the builds in --work (to profile a reader on them)")
    parser.add_argument("--profile", metavar="PEER:COLUMN", help="profile one reader (wave or mel) on the builds kept in --work")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.failed = False
    if args.child:
        print("RESULT " + json.dumps([child(job) for job in json.loads(args.child)]), flush=True)
        return
    if args.profile:
        profile(args)
        return
    seconds, mp3_seconds = 29.12, 29.1
    if args.quick:
        args.clips, args.tracks, args.rounds, args.build_rounds, args.min_seconds = 160, 16, 2, 1, 2.0
    if args.smoke:
        # one worker: each build's processes would cost more to start than 8 clips take
        args.clips, args.tracks, args.rounds, args.build_rounds, args.min_seconds, args.workers = 8, 0, 1, 1, 0.0, 1
        seconds = mp3_seconds = 4.0
    work = args.work or Path(tempfile.mkdtemp(prefix="muzarr_peers_"))
    if args.smoke:
        args.data = work / "smoke_audio"
    elif args.data is None:  # every build reads the whole folder: one folder per set size
        suffix = "" if args.clips == 320 else f"_{args.clips}"
        args.data = Path(tempfile.gettempdir()) / f"muzarr_mtat_like{suffix}"
    try:
        audio = args.data
        make_mtat_like(audio, n_clips=args.clips, seconds=mp3_seconds)
        print(f"{args.clips} MP3 clips of {mp3_seconds} s at 16 kHz in {audio}; builds with {args.workers} processes, "
              f"{args.build_rounds} build rounds, {args.rounds} read rounds; ratios are medians of per-round ratios", flush=True)  # fmt: skip
        runs = builds(args, audio, work, seconds, args.build_rounds, BUILDERS)
        checks(args, work, work / "muzarr", audio, seconds, [p for p in READERS if p.split()[0] != "muzarr"] + ["datasets (torchcodec)"])
        read_runs = reads(args, work, audio, seconds, ["wave", "mel"], args.clips, READERS)
        print(f"\nBuild: {args.clips} clips, wall seconds of each command (interpreter, imports and workers included); "
              "in-process: from the build call (pipe build: its report's time, the Dask cluster's start included)\n")
        print("| peer | seconds (median) | rounds | in-process (s) | clips/s | muzarr vs it | in-process, muzarr vs it |"
              "\n|---|---|---|---|---|---|---|")
        for peer in BUILDERS:
            r = runs[peer]
            spread = ", ".join(f"{v:.1f}" for v in r["wall"])
            print(f"| {peer} | {np.median(r['wall']):.1f} | {spread} | {np.median(r['work']):.1f} | "
                  f"{args.clips / np.median(r['wall']):.1f} | {ratio(runs, peer, 'muzarr', 'wall'):.2f}x | "
                  f"{ratio(runs, peer, 'muzarr', 'work'):.2f}x |")
        read_table(f"{WAVE_CROP}-sample waveform crops, batches of 32", read_runs, "wave", READERS)
        read_table(f"{MEL_CROP}-frame log-mel crops, batches of 32", read_runs, "mel", READERS)
        sizes(work, audio, [p for p in BUILDERS if "torchcodec" not in p])
        if args.tracks:
            tracks(args, work)
        if args.failed:
            raise SystemExit(1)
    finally:
        for path in [] if args.keep else list(work.iterdir()):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        if not args.work and not args.keep:
            work.rmdir()


def profile(args) -> None:
    """cProfile of one reader's first batch and its epochs (for 10 s) on the builds kept in ``--work``."""
    import cProfile
    import pstats

    peer, column = args.profile.split(":")
    job = {"task": "read", "peer": peer, "column": column, "audio": str(args.data), "seconds": 29.12,
           "out": str(folder_of(args.work, peer)), "min_seconds": 10.0,
           "batches": 2}  # fmt: skip
    profiler = cProfile.Profile()
    result = profiler.runcall(child, job)
    print(result)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def tracks(args, work: Path) -> None:
    """The whole-track set: muzarr's track store (``loader_throughput``'s, built by ``pipe build``'s code) and
    each peer holding variable-length items, built once; crops read as for clips."""
    for peer in BUILDERS:
        shutil.rmtree(folder_of(work, peer), ignore_errors=True)
    audio = work / "track_audio"
    lengths = make_track_store(work / "muzarr", audio, args.tracks)
    peers = [p for p in BUILDERS if p != "muzarr" and "torchcodec" not in p]  # WAVs: both decoders agree
    runs = builds(args, audio, work, None, 1, peers)
    checks(args, work, work / "muzarr", audio, None, [p for p in READERS if p.split()[0] != "muzarr"])
    read_runs = reads(args, work, audio, None, ["wave"], args.tracks, READERS)
    print(f"\nWhole tracks: {args.tracks} WAV files of {lengths.min():.0f} s to {lengths.max():.0f} s "
          f"({lengths.sum() / 3600:.1f} h); peers' builds (one round, wall s): "
          + ", ".join(f"{p} {runs[p]['wall'][0]:.1f}" for p in peers))  # fmt: skip
    read_table(f"{WAVE_CROP}-sample crops of whole tracks, batches of 32", read_runs, "wave", READERS)
    sizes(work, audio, ["muzarr", *peers])


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

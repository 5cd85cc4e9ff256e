"""A synthetic multi-label dataset that runs anywhere: music-like clips whose tags follow from content.

Each clip mixes some of four instruments at a tempo: ``drums`` (kick and hi-hat on the
beat grid), ``bass`` (low sine notes), ``melody`` (high harmonic notes) and ``noise`` (a
band of filtered noise). A rhythmic clip is ``fast`` (150-180 BPM) or ``slow`` (60-85
BPM) or neither (100-120 BPM). Every choice comes from one seeded generator, and the
files are written as real MP3 and WAV so that decoding is exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile

from pipeline.errors import MuzarrError
from pipeline.index import DatasetIndex

TAGS = ("drums", "bass", "melody", "noise", "fast", "slow")
SAMPLE_RATE = 22050


def index_demo(
    root: str,
    *,
    n_clips: int = 400,
    seconds: float = 4.0,
    seed: int = 0,
    split_sizes: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> DatasetIndex:
    """Synthesise the demo clips under ``root`` (once) and index them.

    Parameters
    ----------
    root : str
        Folder for the audio; created and filled on first use, reused when its
        ``demo.json`` matches the parameters.
    n_clips : int
        Number of clips; half MP3, half WAV.
    seconds : float
        Clip length.
    seed : int
        Seed of everything random: content, tags and the ``random`` split.
    split_sizes : tuple of float
        Train / valid / test fractions of the ``random`` split scheme.
    """
    if isinstance(n_clips, bool) or not isinstance(n_clips, int) or n_clips < 10:
        raise MuzarrError(f"demo n_clips={n_clips!r} must be an integer >= 10")
    if not 1.0 <= float(seconds) <= 60.0:
        raise MuzarrError(f"demo seconds={seconds!r} must be between 1 and 60")
    root_path = Path(root).expanduser()
    params = {"n_clips": n_clips, "seconds": float(seconds), "seed": seed, "version": 1}
    marker = root_path / "demo.json"
    rng = np.random.default_rng(seed)
    recipes = [_draw_recipe(rng) for _ in range(n_clips)]
    paths = [f"{i % 10}/demo_{i:05d}.{'mp3' if i % 2 == 0 else 'wav'}" for i in range(n_clips)]
    if not (marker.exists() and json.loads(marker.read_text()) == params):
        _write_clips(root_path, paths, recipes, seconds=float(seconds), seed=seed)
        marker.write_text(json.dumps(params))

    labels = np.array([[tag in recipe["tags"] for tag in TAGS] for recipe in recipes], dtype=np.uint8)
    clips = pd.DataFrame(
        {
            "clip_id": [f"demo_{i:05d}" for i in range(n_clips)],
            "path": paths,
            "bpm": [recipe["bpm"] for recipe in recipes],
        }
    )
    order = np.random.default_rng(seed + 1).permutation(n_clips)
    n_train = int(round(split_sizes[0] * n_clips))
    n_valid = int(round(split_sizes[1] * n_clips))
    split = np.empty(n_clips, dtype=object)
    split[order[:n_train]] = "train"
    split[order[n_train : n_train + n_valid]] = "valid"
    split[order[n_train + n_valid :]] = "test"
    return DatasetIndex(
        root=str(root_path),
        clips=clips,
        task="multilabel",
        classes=TAGS,
        labels=labels,
        splits=pd.DataFrame({"random": split}),
        info={"synthetic": True, **params},
    )


def _draw_recipe(rng: np.random.Generator) -> dict:
    present = {name: bool(rng.random() < 0.5) for name in ("drums", "bass", "melody", "noise")}
    if not any(present.values()):
        present[("drums", "bass", "melody", "noise")[rng.integers(4)]] = True
    tempo = ("slow", "medium", "fast")[rng.integers(3)]
    bpm = {"slow": rng.uniform(60, 85), "medium": rng.uniform(100, 120), "fast": rng.uniform(150, 180)}[tempo]
    rhythmic = present["drums"] or present["bass"] or present["melody"]
    tags = {name for name, on in present.items() if on}
    if rhythmic and tempo != "medium":
        tags.add(tempo)
    return {
        "present": present,
        "bpm": float(bpm),
        "tags": tags,
        "root_note": int(rng.integers(0, 12)),
        "noise_band": float(rng.uniform(1500, 5000)),
        "gain": float(rng.uniform(0.5, 0.9)),
    }


def synthesise(recipe: dict, *, seconds: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """One clip of float32 audio in [-1, 1] for a recipe drawn by :func:`_draw_recipe`."""
    n = int(seconds * sr)
    beat = 60.0 / recipe["bpm"]
    onsets = np.arange(rng.uniform(0, beat / 2), seconds, beat)
    mix = np.zeros(n)
    if recipe["present"]["drums"]:
        for k, onset in enumerate(onsets):
            _add_event(mix, onset, sr, _kick(sr) if k % 2 == 0 else _hat(sr, rng))
            _add_event(mix, onset + beat / 2, sr, 0.5 * _hat(sr, rng))
    if recipe["present"]["bass"]:
        base = 41.2 * 2 ** (recipe["root_note"] / 12)
        for onset in onsets:
            freq = base * 2 ** (rng.choice([0, 3, 5, 7, 10]) / 12)
            _add_event(mix, onset, sr, 0.6 * _tone(freq, beat * 0.9, sr, harmonics=2))
    if recipe["present"]["melody"]:
        base = 587.3 * 2 ** (recipe["root_note"] / 12)
        for onset in np.concatenate([onsets, onsets + beat / 2]):
            freq = base * 2 ** (rng.choice([0, 2, 4, 7, 9, 12, 14]) / 12)
            _add_event(mix, onset, sr, 0.3 * _tone(freq, beat * 0.45, sr, harmonics=4))
    if recipe["present"]["noise"]:
        mix += 0.25 * _band_noise(n, recipe["noise_band"], sr, rng)
    peak = np.abs(mix).max() or 1.0
    return (recipe["gain"] * mix / peak + 0.001 * rng.standard_normal(n)).astype(np.float32)


def _add_event(mix: np.ndarray, onset: float, sr: int, event: np.ndarray) -> None:
    start = int(onset * sr)
    if start >= len(mix):
        return
    stop = min(len(mix), start + len(event))
    mix[start:stop] += event[: stop - start]


def _kick(sr: int) -> np.ndarray:
    t = np.arange(int(0.15 * sr)) / sr
    return np.sin(2 * np.pi * (50 + 100 * np.exp(-t * 40)) * t) * np.exp(-t * 25)


def _hat(sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.05 * sr)) / sr
    noise = np.diff(rng.standard_normal(len(t) + 1))  # differencing tilts the noise towards the treble
    return 0.4 * noise * np.exp(-t * 80)


def _tone(freq: float, duration: float, sr: int, *, harmonics: int) -> np.ndarray:
    t = np.arange(int(duration * sr)) / sr
    wave = sum(np.sin(2 * np.pi * freq * h * t) / h for h in range(1, harmonics + 1))
    attack = np.minimum(1.0, t / 0.01)
    return wave * attack * np.exp(-t * 3)


def _band_noise(n: int, centre: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spectrum *= np.exp(-0.5 * ((freqs - centre) / (centre / 4)) ** 2)
    band = np.fft.irfft(spectrum, n)
    return band / (np.abs(band).max() or 1.0)


def _write_clips(root: Path, paths: list[str], recipes: list[dict], *, seconds: float, seed: int) -> None:
    for i, (path, recipe) in enumerate(zip(paths, recipes)):
        audio = synthesise(recipe, seconds=seconds, rng=np.random.default_rng([seed, i]))
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.endswith(".mp3"):
            soundfile.write(target, audio, SAMPLE_RATE, format="MP3", subtype="MPEG_LAYER_III")
        else:
            soundfile.write(target, audio, SAMPLE_RATE, subtype="PCM_16")

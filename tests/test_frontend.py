"""The on-device mel front end against librosa, the reference implementation."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import scipy.signal
import torch

from pipeline.errors import MuzarrError
from training.models.frontend import AmplitudeToDB, MelSpectrogram

# (librosa keyword arguments) for the settings the registered models use
PARAMETER_SETS = {
    "short_res_librosa": {"sr": 16000, "n_fft": 512, "hop_length": 256, "n_mels": 128, "fmax": 8000.0},
    "short_res_torchaudio": {
        "sr": 16000,
        "n_fft": 512,
        "hop_length": 256,
        "n_mels": 128,
        "fmax": 8000.0,
        "htk": True,
        "norm": None,
        "pad_mode": "reflect",
    },
    "crnn": {"sr": 12000, "n_fft": 512, "hop_length": 256, "n_mels": 96},
    "seed000": {"sr": 16000, "n_fft": 1024, "hop_length": 512, "n_mels": 64},
}


def chirp_and_noise(sr: int, seconds: float = 2.3, seed: int = 0) -> np.ndarray:
    """A log chirp sweeping 40 Hz to 0.45 sr over the clip, plus white noise 26 dB down."""
    t = np.arange(round(seconds * sr)) / sr
    sweep = 0.5 * scipy.signal.chirp(t, f0=40.0, t1=t[-1], f1=0.45 * sr, method="logarithmic")
    noise = 0.05 * np.random.default_rng(seed).standard_normal(t.size)
    return sweep + noise


# librosa keyword -> MelSpectrogram keyword; settings librosa leaves at its default are left
# at MelSpectrogram's default too, so the comparison also checks that the defaults agree
RENAMED = {"sr": "sample_rate", "fmax": "f_max"}


def module_for(kw: dict) -> MelSpectrogram:
    return MelSpectrogram(**{RENAMED.get(key, key): value for key, value in kw.items()})


def test_librosa_default_padding_is_constant():
    # the premise of MelSpectrogram's default; a librosa upgrade that changes it must fail here
    import inspect

    assert inspect.signature(librosa.feature.melspectrogram).parameters["pad_mode"].default == "constant"


@pytest.mark.parametrize("dtype, tolerance_db", [(np.float64, 1e-6), (np.float32, 1e-2)])
@pytest.mark.parametrize("setting", sorted(PARAMETER_SETS))
def test_log_mel_matches_librosa(setting, dtype, tolerance_db):
    kw = PARAMETER_SETS[setting]
    y = chirp_and_noise(kw["sr"])
    expected = librosa.power_to_db(librosa.feature.melspectrogram(y=y, **kw), ref=1.0, top_db=None)

    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    mel = module_for(kw).to(torch_dtype)
    got = AmplitudeToDB()(mel(torch.from_numpy(y.astype(dtype))))

    assert got.dtype == torch_dtype
    assert got.shape == expected.shape == (kw["n_mels"], 1 + y.size // kw["hop_length"])
    assert np.abs(got.numpy() - expected).max() < tolerance_db


def test_power_spectrum_matches_librosa_without_db():
    kw = PARAMETER_SETS["crnn"]
    y = chirp_and_noise(kw["sr"])
    expected = librosa.feature.melspectrogram(y=y, **kw)
    got = module_for(kw).double()(torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_batches_are_independent_examples():
    kw = PARAMETER_SETS["short_res_librosa"]
    clips = np.stack([chirp_and_noise(kw["sr"], seconds=1.0, seed=s) for s in range(6)]).reshape(2, 3, -1)
    mel = module_for(kw)
    batched = mel(torch.from_numpy(clips.astype(np.float32)))
    assert batched.shape == (2, 3, 128, 1 + clips.shape[-1] // 256)
    single = mel(torch.from_numpy(clips[1, 2].astype(np.float32)))
    torch.testing.assert_close(batched[1, 2], single)


def test_top_db_matches_librosa_and_is_per_example():
    kw = PARAMETER_SETS["crnn"]
    power = librosa.feature.melspectrogram(y=chirp_and_noise(kw["sr"]), **kw)
    expected = librosa.power_to_db(power, ref=1.0, top_db=40.0)
    to_db = AmplitudeToDB(top_db=40.0)
    got = to_db(torch.from_numpy(power)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert got.min() == pytest.approx(got.max() - 40.0)

    # a quiet example beside a loud one keeps its own 40 dB range
    pair = torch.from_numpy(np.stack([power, power * 1e-6]))
    both = to_db(pair).numpy()
    np.testing.assert_allclose(both[1], expected - 60.0, atol=1e-9)


def test_amplitude_to_db_floor_reference_and_magnitude():
    x = torch.tensor([[0.0, 1e-12, 1.0, 100.0]], dtype=torch.float64)
    np.testing.assert_allclose(AmplitudeToDB()(x).numpy(), [[-100.0, -100.0, 0.0, 20.0]])
    np.testing.assert_allclose(AmplitudeToDB(ref=100.0)(x).numpy(), [[-120.0, -120.0, -20.0, 0.0]])
    np.testing.assert_allclose(AmplitudeToDB(stype="magnitude")(x).numpy(), [[-200.0, -200.0, 0.0, 40.0]])


def test_filter_bank_follows_the_module_dtype_and_device():
    mel = module_for(PARAMETER_SETS["seed000"])
    assert mel.mel_filters.dtype == torch.float32 and tuple(mel.mel_filters.shape) == (64, 513)
    assert mel.double().mel_filters.dtype == torch.float64
    # rebuilt from the options, so not part of a checkpoint
    assert "mel_filters" not in mel.state_dict()


def test_half_precision_and_autocast_compute_in_float32():
    kw = PARAMETER_SETS["short_res_librosa"]
    y = torch.from_numpy(chirp_and_noise(kw["sr"]).astype(np.float32))
    mel, to_db = module_for(kw), AmplitudeToDB()
    reference = to_db(mel(y))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = to_db(mel(y))
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, reference)
    # a loud clip whose frame power overflows float16 still gives finite decibels
    loud = to_db(mel((y * 4.0).half()))
    assert loud.dtype == torch.float32 and torch.isfinite(loud).all()
    assert to_db(torch.zeros(1, 2, 2, dtype=torch.float16)).eq(-100.0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    kw = PARAMETER_SETS["short_res_librosa"]
    y = torch.from_numpy(chirp_and_noise(kw["sr"]).astype(np.float32))
    mel = module_for(kw)
    to_db = AmplitudeToDB()
    cpu = to_db(mel(y))
    gpu = to_db(mel.to("cuda")(y.to("cuda"))).cpu()
    assert (cpu - gpu).abs().max() < 1e-2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"pad_mode": "edge"}, "pad_mode"),
        ({"hop_length": 0}, "hop_length"),
        ({"n_fft": 512, "win_length": 1024}, "win_length"),
        ({"sample_rate": 16000, "f_max": 9000.0}, "f_max"),
    ],
)
def test_bad_settings_are_muzarr_errors(kwargs, message):
    with pytest.raises(MuzarrError, match=message):
        MelSpectrogram(**kwargs)


def test_bad_db_settings_are_muzarr_errors():
    with pytest.raises(MuzarrError, match="stype"):
        AmplitudeToDB(stype="energy")
    with pytest.raises(MuzarrError, match="amin"):
        AmplitudeToDB(amin=0.0)

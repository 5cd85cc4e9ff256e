"""Whisper's encoder: the audio half of a speech recogniser, whose layers probe well for music too.

- Radford, Kim, Xu, Brockman, McLeavey, Sutskever (2023). Robust Speech Recognition via Large-Scale
  Weak Supervision. ICML.

Only the encoder is built and loaded (``WhisperEncoder``; the decoder's weights are not read).
Each window goes through ``WhisperFeatureExtractor`` (80 or 128 log-mels, 10 ms hop) as Whisper
always sees audio: padded with zeros to 30 s, so a window is at most 30 s (the default), and the
encoder attends over the whole 30 s, padding included, as it did in training. Its hidden states
(the convolutional stem plus positions, then every layer; the last one after the final layer norm,
as transformers returns them) have one frame per 20 ms; what muzarr keeps, and pools over, are the
frames whose centre lies inside the window's audio, ``ceil(samples / 320)`` at 16 kHz: the padding's
frames are dropped, as most probing code does, so that up to 29 s of padding does not dominate the
mean of a short clip (the audio's frames still saw the padding through attention).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.embed.models import (
    Backbone,
    Family,
    ModelInfo,
    frame_count,
    no_remote_code,
    read_preprocessor,
    refuse_longer_window,
    register,
    torch_dtype,
)
from pipeline.embed.weights import load_exactly, read_state_dict

#: where the encoder's tensors sit in what transformers saves (WhisperForConditionalGeneration, WhisperModel)
ENCODER_PREFIXES = ("model.encoder.", "encoder.")


def encoder_key(key: str) -> str | None:
    for prefix in ENCODER_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return None


def feature_extractor(folder: Path, config):
    """The folder's ``WhisperFeatureExtractor`` (Whisper's defaults for its mel count if it has none)."""
    from transformers import WhisperFeatureExtractor

    if (folder / "preprocessor_config.json").is_file():
        return WhisperFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
    return WhisperFeatureExtractor(feature_size=config.num_mel_bins)


class WhisperBackbone(Backbone):
    def __init__(self, encoder, extractor, info: ModelInfo, *, device: str, precision: str) -> None:
        self.encoder, self.extractor, self.info = encoder, extractor, info
        self.device, self.dtype = device, torch_dtype(precision)

    def hidden_states(self, windows):
        import torch

        n = windows.shape[-1]
        refuse_longer_window(n, limit=self.extractor.n_samples, info=self.info, model="Whisper")
        rate = self.info.sample_rate
        features = self.extractor(list(windows), sampling_rate=rate, return_tensors="pt").input_features
        keep = frame_count(self.info.frames, n)
        with torch.inference_mode():
            out = self.encoder(features.to(self.device, self.dtype), output_hidden_states=True)
            return torch.stack([h[:, :keep] for h in out.hidden_states], dim=1)


@register
class Whisper(Family):
    name = "whisper"
    citation = "Whisper (Radford et al. 2023)"
    model_types = ("whisper",)

    def describe(self, folder: Path, config: dict[str, Any], *, trust_remote_code: bool) -> ModelInfo:
        no_remote_code(folder, trust_remote_code, family="Whisper")
        pre = read_preprocessor(folder)
        rate, hop = int(pre.get("sampling_rate", 16000)), int(pre.get("hop_length", 160))
        chunk = float(pre.get("chunk_length", 30))
        positions = int(config.get("max_source_positions", 1500))
        return ModelInfo(
            family=self.name, sample_rate=rate, hidden_layers=int(config["encoder_layers"]) + 1,
            dim=int(config["d_model"]), frames=f"conv:1/{2 * hop};max:{positions}", window_seconds=chunk,
            normalize=False,
        )  # fmt: skip

    def load(self, folder: Path, info: ModelInfo, *, device: str, precision: str) -> Backbone:
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config = WhisperConfig.from_pretrained(str(folder), local_files_only=True)
        encoder = WhisperEncoder(config)
        load_exactly(
            encoder, read_state_dict(folder, encoder_key), where=f"--embedding {folder}",
            hint="give a folder save_pretrained wrote from a Whisper model",
        )  # fmt: skip
        encoder = encoder.eval().to(device, torch_dtype(precision))
        return WhisperBackbone(encoder, feature_extractor(folder, config), info, device=device, precision=precision)

"""EnCodec's encoder: the continuous latent a neural audio codec quantises.

- Défossez, Copet, Synnaeve, Adi (2023). High Fidelity Neural Audio Compression. TMLR.

The encoder (``EncodecModel.encoder``) is a SEANet stack of strided convolutions, residual blocks
and an LSTM, ending in a convolution to ``hidden_size`` channels (128 for ``facebook/encodec_24khz``)
at ``sampling_rate / prod(upsampling_ratios)`` frames a second (75 Hz); its blocks change width on
the way, so muzarr stores one layer, the encoder's output, the vector the quantiser reads: what
MARBLE's EnCodec extractor averages over time. A window of ``n`` samples gives ``ceil(n / hop)``
frames (the padded convolutions round up). The window is the model's own chunk (``chunk_length_s``:
none for the 24 kHz model, whose whole clip goes through at once as MARBLE does; 1 s for the 48 kHz
one); as ``EncodecModel.encode`` does, a window is divided by its RMS first when ``normalize`` is set,
and a mono window feeds every input channel of a stereo model (the mono mix that the codec's own
``convert_audio`` would make of it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline.embed.models import Backbone, Family, ModelInfo, no_remote_code, register, torch_dtype
from pipeline.embed.speech import quiet_transformers, refuse_missing


class EncodecBackbone(Backbone):
    def __init__(self, encoder, *, channels: int, normalize: bool, device: str, precision: str) -> None:
        self.encoder, self.channels, self.normalize = encoder, channels, normalize
        self.device, self.dtype = device, torch_dtype(precision)

    def hidden_states(self, windows):
        import torch

        with torch.inference_mode():
            x = torch.as_tensor(windows, dtype=torch.float32, device=self.device)[:, None, :]
            x = x.expand(-1, self.channels, -1)
            if self.normalize:  # EncodecModel._encode_frame: the mono mix's RMS, per window
                scale = x.mean(dim=1, keepdim=True).pow(2).mean(dim=-1, keepdim=True).sqrt() + 1e-8
                x = x / scale
            out = self.encoder(x.to(self.dtype))  # [batch, dim, frame]
            return out.transpose(1, 2)[:, None]


@register
class Encodec(Family):
    name = "encodec"
    citation = "EnCodec (Défossez et al. 2023)"
    model_types = ("encodec",)

    def describe(self, folder: Path, config: dict[str, Any], *, trust_remote_code: bool) -> ModelInfo:
        no_remote_code(folder, trust_remote_code, family="EnCodec")
        hop = math.prod(int(r) for r in config.get("upsampling_ratios", [8, 5, 4, 2]))
        chunk = config.get("chunk_length_s")
        return ModelInfo(
            family=self.name, sample_rate=int(config.get("sampling_rate", 24000)), hidden_layers=1,
            dim=int(config.get("hidden_size", 128)), frames=f"conv:1/{hop}",
            window_seconds=float(chunk) if chunk else None, normalize=False,
        )  # fmt: skip

    def load(self, folder: Path, info: ModelInfo, *, device: str, precision: str) -> Backbone:
        from transformers import EncodecModel

        quiet_transformers()
        model, loading = EncodecModel.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
        refuse_missing(folder, loading)
        encoder = model.encoder.eval().to(device, torch_dtype(precision))  # the decoder and quantiser are dropped
        channels, normalize = int(model.config.audio_channels), bool(model.config.normalize)
        return EncodecBackbone(encoder, channels=channels, normalize=normalize, device=device, precision=precision)

"""AST, the Audio Spectrogram Transformer: a ViT over 16x16 patches of a 128-band log-mel spectrogram.

- Gong, Chung, Glass (2021). AST: Audio Spectrogram Transformer. Interspeech.

Each window goes through the folder's ``ASTFeatureExtractor`` (Kaldi-style fbank, 25 ms frames every
10 ms, zero-padded to ``max_length`` frames, 10.24 s, and normalised with the AudioSet mean and
std), so a window is at most as long as the model's input (the default). Without torchaudio (as in
muzarr's environments) transformers computes the fbank with its own NumPy port; with torchaudio installed it calls
``torchaudio.compliance.kaldi``: the two agree closely but not bit for bit, so a store's bytes
depend on which one its workers had.

Hidden states are the patch embeddings and every layer's output (``ASTModel``, ``output_hidden_states``).
Their tokens are the two summary tokens (CLS, distillation), then the patch grid frequency-major
(``f * t_dim + t``). A frame is one time column of the grid: the mean over its frequency patches;
the summary tokens are left out (they have no time; AST's own classifier reads them, after a final
layer norm that the hidden states do not include). The columns kept are those whose patch starts
inside the window's audio, ``ceil(fbank frames / time_stride)``: the padding's columns are dropped.
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
from pipeline.embed.speech import quiet_transformers, refuse_missing
from pipeline.errors import MuzarrError

#: ASTFeatureExtractor's frames: 400 samples (25 ms at 16 kHz) every 160, without centring
FBANK_WINDOW, FBANK_HOP = 400, 160
SUMMARY_TOKENS = 2


def grid(config: dict[str, Any]) -> tuple[int, int]:
    """(frequency, time) patches of AST's input (``ASTEmbeddings.get_shape``)."""
    patch = int(config.get("patch_size", 16))
    f_dim = (int(config.get("num_mel_bins", 128)) - patch) // int(config.get("frequency_stride", 10)) + 1
    t_dim = (int(config.get("max_length", 1024)) - patch) // int(config.get("time_stride", 10)) + 1
    return f_dim, t_dim


class ASTBackbone(Backbone):
    def __init__(self, model, extractor, info: ModelInfo, *, device: str, precision: str) -> None:
        self.model, self.extractor, self.info = model, extractor, info
        self.f_dim, self.t_dim = grid(model.config.to_dict())
        self.device, self.dtype = device, torch_dtype(precision)

    def hidden_states(self, windows):
        import torch

        n = windows.shape[-1]
        # the extractor cuts what does not fit its max_length frames: a longer window would lose its end
        refuse_longer_window(n, limit=FBANK_WINDOW + (self.extractor.max_length - 1) * FBANK_HOP, info=self.info, model="AST")
        values = self.extractor(list(windows), sampling_rate=self.info.sample_rate, return_tensors="pt").input_values
        keep = frame_count(self.info.frames, n)
        with torch.inference_mode():
            out = self.model(values.to(self.device, self.dtype), output_hidden_states=True)
            layers = []
            for h in out.hidden_states:
                patches = h[:, SUMMARY_TOKENS:].reshape(h.shape[0], self.f_dim, self.t_dim, h.shape[-1])
                layers.append(patches.float().mean(dim=1)[:, :keep])
            return torch.stack(layers, dim=1)


@register
class AST(Family):
    name = "ast"
    citation = "AST (Gong et al. 2021)"
    model_types = ("audio-spectrogram-transformer",)

    def describe(self, folder: Path, config: dict[str, Any], *, trust_remote_code: bool) -> ModelInfo:
        no_remote_code(folder, trust_remote_code, family="AST")
        pre = read_preprocessor(folder)
        rate = int(pre.get("sampling_rate", 16000))
        max_length, mels = int(config.get("max_length", 1024)), int(config.get("num_mel_bins", 128))
        agree = int(pre.get("max_length", max_length)) == max_length and int(pre.get("num_mel_bins", mels)) == mels
        _, t_dim = grid(config)
        info = ModelInfo(
            family=self.name, sample_rate=rate, hidden_layers=int(config["num_hidden_layers"]) + 1,
            dim=int(config["hidden_size"]),
            frames=f"conv:{FBANK_WINDOW}/{FBANK_HOP},1/{int(config.get('time_stride', 10))};max:{t_dim}",
            window_seconds=max_length * FBANK_HOP / rate, normalize=False,
        )  # fmt: skip
        if not agree:
            raise MuzarrError(
                f"--embedding {folder}: preprocessor_config.json's max_length or num_mel_bins differs from "
                "config.json's: the model would not take its own features"
            )
        return info

    def load(self, folder: Path, info: ModelInfo, *, device: str, precision: str) -> Backbone:
        from transformers import ASTFeatureExtractor, ASTModel

        quiet_transformers()
        model, loading = ASTModel.from_pretrained(
            str(folder), dtype=torch_dtype(precision), local_files_only=True, output_loading_info=True
        )
        refuse_missing(folder, loading)
        extractor = ASTFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
        return ASTBackbone(model.eval().to(device), extractor, info, device=device, precision=precision)

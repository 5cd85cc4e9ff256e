"""CLAP's audio tower (e.g. ``laion/larger_clap_music``): HTSAT, a Swin transformer over a log-mel "image".

- Wu, Chen, Zhang, Hui, Berg-Kirkpatrick, Dubnov (2023). Large-scale Contrastive Language-Audio
  Pretraining with Feature Fusion and Keyword-to-Caption Augmentation. ICASSP.
- Chen, Du, Zhu, Ma, Berg-Kirkpatrick, Dubnov (2022). HTS-AT: A Hierarchical Token-Semantic Audio
  Transformer for Sound Classification and Detection. ICASSP.

Only the audio tower is built and loaded (``ClapAudioModel``; the text tower's weights are not read).
Each window goes through the folder's ``ClapFeatureExtractor`` (48 kHz, 10 s input: a shorter window
is repeated or zero-padded to 10 s as its ``padding`` setting says; a longer one is refused, since
the extractor would crop it at random). ``is_longer`` is False for every window (none is longer than
the input); the extractor of a fusion model would otherwise mark one at random.

Swin stages halve the token grid and double the width, so the tower's hidden states are not of one
width. The layers muzarr stores are those of its last stage, all as wide as the output: the stage's
input (the previous stage's merged tokens), each of its blocks' outputs, and the final layer norm
(the tower's ``last_hidden_state``, which CLAP's audio projection reads after pooling); for
``larger_clap_music`` (depths 2, 2, 12, 2) that is 4 layers of 1024. The projected 512-d embedding
is left out: it is another width.

Frames: HTSAT folds the 10 s spectrogram into ``freq_ratio`` time chunks stacked along frequency,
so a token's row is (chunk, frequency band) and its column a time step within the chunk. A frame
is one (chunk, column), averaged over the frequency bands: ``freq_ratio x columns`` frames per window
in time order (32 for ``larger_clap_music``, about 0.3 s each), the layout ``last_hidden_state``
has; their mean for the last layer is the tower's ``pooler_output``. A window always gives that many
frames (a short window's repeats included).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from pipeline.embed.models import (
    Backbone,
    Family,
    ModelInfo,
    no_remote_code,
    read_config,
    read_preprocessor,
    refuse_longer_window,
    register,
    torch_dtype,
)
from pipeline.embed.weights import load_exactly, read_state_dict


def audio_config(config: dict[str, Any]) -> dict[str, Any]:
    """The audio tower's settings: ``audio_config`` of a whole CLAP's config.json, or the file itself."""
    return config.get("audio_config", config) if config.get("model_type") == "clap" else config


def layout(audio: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """(width, layers, grid height, grid width, freq_ratio) of the last stage of an HTSAT with these settings."""
    depths = [int(d) for d in audio.get("depths", [2, 2, 6, 2])]
    spec, mels = int(audio.get("spec_size", 256)), int(audio.get("num_mel_bins", 64))
    stride = audio.get("patch_stride", [4, 4])
    side = spec // int(stride[0] if isinstance(stride, (list, tuple)) else stride) // 2 ** (len(depths) - 1)
    width = int(audio.get("patch_embeds_hidden_size", 96)) * 2 ** (len(depths) - 1)
    return width, depths[-1] + 2, side, side, spec // mels


class ClapBackbone(Backbone):
    def __init__(self, model, extractor, info: ModelInfo, *, device: str, precision: str) -> None:
        self.model, self.extractor, self.info = model, extractor, info
        self.device, self.dtype = device, torch_dtype(precision)
        encoder = model.audio_encoder
        self.height, self.width = encoder.input_resolutions[-1]
        self.freq_ratio = encoder.freq_ratio
        self.captured: list = []  # what the hooks saw in one forward pass (the lock keeps passes apart)
        self.lock = threading.Lock()
        last = encoder.layers[-1]
        last.register_forward_pre_hook(lambda module, args: self.captured.append(args[0]))
        for block in last.blocks:
            block.register_forward_hook(lambda module, args, out: self.captured.append(out[0]))
        encoder.norm.register_forward_hook(lambda module, args, out: self.captured.append(out))

    def frames(self, tokens):
        """``[batch, height * width, dim]`` tokens -> ``[batch, freq_ratio * width, dim]`` frames in time order."""
        b, _, d = tokens.shape
        grid = tokens.float().reshape(b, self.freq_ratio, self.height // self.freq_ratio, self.width, d)
        return grid.mean(dim=2).reshape(b, self.freq_ratio * self.width, d)

    def hidden_states(self, windows):
        import torch

        n = windows.shape[-1]
        refuse_longer_window(n, limit=self.extractor.nb_max_samples, info=self.info, model="CLAP")
        inputs = self.extractor(list(windows), sampling_rate=self.info.sample_rate, return_tensors="pt")
        is_longer = torch.zeros(len(windows), 1, dtype=torch.bool, device=self.device)
        with self.lock, torch.inference_mode():
            self.captured.clear()
            self.model(inputs.input_features.to(self.device, self.dtype), is_longer=is_longer)
            layers = [self.frames(tokens) for tokens in self.captured]
            self.captured.clear()
        return torch.stack(layers, dim=1)


def tower_key(model_type: str):
    """Checkpoint name -> ``ClapAudioModel``'s: a whole CLAP's audio tower sits under ``audio_model.``."""
    if model_type != "clap":
        return lambda key: key
    return lambda key: key[len("audio_model.") :] if key.startswith("audio_model.") else None


@register
class CLAP(Family):
    name = "clap"
    citation = "CLAP (Wu et al. 2023), HTS-AT (Chen et al. 2022)"
    model_types = ("clap", "clap_audio_model")

    def describe(self, folder: Path, config: dict[str, Any], *, trust_remote_code: bool) -> ModelInfo:
        no_remote_code(folder, trust_remote_code, family="CLAP")
        pre = read_preprocessor(folder)
        dim, layers, _, columns, freq_ratio = layout(audio_config(config))
        return ModelInfo(
            family=self.name, sample_rate=int(pre.get("sampling_rate", 48000)), hidden_layers=layers, dim=dim,
            frames=f"fixed:{freq_ratio * columns}", window_seconds=float(pre.get("max_length_s", 10)),
            normalize=False,
        )  # fmt: skip

    def load(self, folder: Path, info: ModelInfo, *, device: str, precision: str) -> Backbone:
        from transformers import ClapAudioConfig, ClapAudioModel, ClapFeatureExtractor

        config = read_config(folder)
        model = ClapAudioModel(ClapAudioConfig.from_dict(audio_config(config)))
        load_exactly(
            model, read_state_dict(folder, tower_key(config.get("model_type"))), where=f"--embedding {folder}",
            hint="give a folder save_pretrained wrote from a CLAP model",
        )  # fmt: skip
        extractor = ClapFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
        model = model.eval().to(device, torch_dtype(precision))
        return ClapBackbone(model, extractor, info, device=device, precision=precision)

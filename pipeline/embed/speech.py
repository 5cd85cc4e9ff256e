"""Self-supervised waveform encoders of transformers: wav2vec 2.0, HuBERT, WavLM and data2vec-audio.

A convolutional feature encoder (20 ms frames at 16 kHz) under a transformer; ``hidden_states``
are the projected features (index 0) and every transformer layer's output. The music models of
this shape load as they are: MERT-v0 is a ``HubertModel`` and music2vec a ``Data2VecAudioModel``.

- Baevski, Zhou, Mohamed, Auli (2020). wav2vec 2.0: A Framework for Self-Supervised Learning of
  Speech Representations. NeurIPS.
- Hsu, Bolte, Tsai, Lakhotia, Salakhutdinov, Mohamed (2021). HuBERT: Self-Supervised Speech
  Representation Learning by Masked Prediction of Hidden Units. IEEE/ACM TASLP 29.
- Chen et al. (2022). WavLM: Large-Scale Self-Supervised Pre-Training for Full Stack Speech
  Processing. IEEE JSTSP 16(6).
- Baevski, Hsu, Xu, Babu, Gu, Auli (2022). data2vec: A General Framework for Self-supervised
  Learning in Speech, Vision and Language. ICML.
- Li et al. (2022). MAP-Music2Vec: A Simple and Effective Baseline for Self-Supervised Music Audio
  Representation Learning. ISMIR late-breaking demo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.embed.models import Backbone, Family, ModelInfo, read_preprocessor, register, torch_dtype
from pipeline.errors import MuzarrError

#: the window MARBLE's extraction gives a whole 30-second clip of these models (one forward per clip)
DEFAULT_WINDOW_SECONDS = 30.0


def conv_rule(config: dict[str, Any]) -> str:
    """The frame rule (``conv:K/S,...``) of a wav2vec 2.0-style convolutional feature encoder."""
    kernels, strides = config.get("conv_kernel"), config.get("conv_stride")
    if not isinstance(kernels, list) or not isinstance(strides, list) or len(kernels) != len(strides) or not kernels:
        raise MuzarrError("config.json: conv_kernel and conv_stride must be lists of the same length")
    return "conv:" + ",".join(f"{int(k)}/{int(s)}" for k, s in zip(kernels, strides))


def encoder_info(family: str, folder: Path, config: dict[str, Any], *, trust_remote_code: bool,
                 window_seconds: float | None = DEFAULT_WINDOW_SECONDS) -> ModelInfo:
    """What a wav2vec 2.0-shaped ``config.json`` (and its preprocessor settings) says."""
    preprocessor = read_preprocessor(folder)
    return ModelInfo(
        family=family,
        sample_rate=int(preprocessor.get("sampling_rate", config.get("sample_rate", 16000))),
        hidden_layers=int(config["num_hidden_layers"]) + 1,
        dim=int(config["hidden_size"]),
        frames=conv_rule(config),
        window_seconds=window_seconds,
        normalize=bool(preprocessor.get("do_normalize", False)),
        trust_remote_code=trust_remote_code,
    )


class TransformersBackbone(Backbone):
    """A transformers model whose forward takes ``input_values`` and returns ``hidden_states``."""

    def __init__(self, model, *, device: str, precision: str) -> None:
        self.model, self.device, self.dtype = model, device, torch_dtype(precision)

    def hidden_states(self, windows):
        import torch

        with torch.inference_mode():
            x = torch.as_tensor(windows).to(self.device, self.dtype)
            out = self.model(x, output_hidden_states=True)
            return torch.stack(out.hidden_states, dim=1)


def quiet_transformers() -> None:
    """A worker's log is not the place for transformers' loading bars and notes on unused heads."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


#: weights a checkpoint may lack without changing the forward pass: SpecAugment's mask, used in training only
UNUSED_AT_INFERENCE = ("masked_spec_embed",)


def refuse_missing(folder: Path, loading: dict[str, Any]) -> None:
    """One line when ``from_pretrained`` left weights of the model at their random initial values (it only
    logs that), or found weights of another shape."""
    missing = sorted(k for k in loading.get("missing_keys", ()) if k.rpartition(".")[2] not in UNUSED_AT_INFERENCE)
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in loading.get("mismatched_keys", ()))
    if missing or mismatched:
        parts = [f"{len(missing)} missing, e.g. {missing[0]}"] if missing else []
        parts += [f"{len(mismatched)} of another shape, e.g. {mismatched[0]}"] if mismatched else []
        raise MuzarrError(
            f"--embedding {folder}: its weights do not cover the model its config.json describes ({'; '.join(parts)}): "
            "give the folder save_pretrained wrote"
        )


def load_transformers(folder: Path, *, device: str, precision: str, trust_remote_code: bool = False):
    """``AutoModel.from_pretrained`` of ``folder`` in eval mode on ``device`` (safetensors first; a
    pickled ``.bin`` is read by transformers with ``weights_only=True``); weights it lacks are refused."""
    from transformers import AutoModel

    quiet_transformers()
    model, loading = AutoModel.from_pretrained(
        str(folder), dtype=torch_dtype(precision), trust_remote_code=trust_remote_code, local_files_only=True,
        output_loading_info=True,
    )  # fmt: skip
    refuse_missing(folder, loading)
    return model.eval().to(device)


@register
class SpeechEncoders(Family):
    name = "wav2vec2"
    citation = "wav2vec 2.0 (Baevski et al. 2020), HuBERT (Hsu et al. 2021), WavLM (Chen et al. 2022), data2vec (Baevski et al. 2022)"
    model_types = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")

    def describe(self, folder: Path, config: dict[str, Any], *, trust_remote_code: bool) -> ModelInfo:
        return encoder_info(self.name, folder, config, trust_remote_code=trust_remote_code)

    def load(self, folder: Path, info: ModelInfo, *, device: str, precision: str) -> Backbone:
        model = load_transformers(folder, device=device, precision=precision, trust_remote_code=info.trust_remote_code)
        return TransformersBackbone(model, device=device, precision=precision)

"""MERT-v1 (95M and 330M): the hub folders whose ``config.json`` says ``model_type: mert_model``.

- Li, Yuan, Zhang, Ma, Chen, Yin, Lin, Ragni, Benetos, Gyenge, Dannenberg, Liu, Chen, Xia, Shi,
  Huang, Guo, Fu (2024). MERT: Acoustic Music Understanding Model with Large-Scale Self-supervised
  Training. ICLR.

The folder carries its own ``modeling_MERT.py``; it is not run unless asked. Read, that file's
``MERTModel`` is transformers' ``HubertModel`` with three additions: a constant-Q transform
concatenated to the convolutional features (``feature_extractor_cqt``), a DeepNorm encoder
(``deepnorm``: residuals scaled by ``(2L)^0.25``, built from its own layer class) and, inside that
DeepNorm layer only, "attention relaxation" (``attention_relax``). Every other module is transformers'
own class under the same attribute name (``feature_extractor``, ``feature_projection`` with
``layer_norm`` and ``projection``, ``masked_spec_embed``, ``encoder``), so with the CQT and DeepNorm
off its state dict is ``HubertModel``'s key for key, but for the positional convolution's weight
norm, saved by the transformers of 2023 as ``weight_g``/``weight_v`` (today's
``parametrizations.weight.original0``/``original1``). Such a folder is loaded here into a
``HubertModel`` built from the equivalent ``HubertConfig``, exactly (:func:`~pipeline.embed.weights.load_exactly`).
``attention_relax`` alone changes nothing there: the only layer that reads it exists under DeepNorm,
and even there it subtracts a row's maximum before the softmax, which the softmax does not see.

A folder with the CQT or DeepNorm on is refused, unless ``trust_remote_code=true`` runs its own code
(``AutoModel.from_pretrained(..., trust_remote_code=True)``; the manifest records that it did).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.embed.models import Backbone, Family, ModelInfo, read_config, register, torch_dtype
from pipeline.embed.speech import TransformersBackbone, encoder_info, load_transformers
from pipeline.embed.weights import load_exactly, read_state_dict
from pipeline.errors import MuzarrError

#: the fields of MERT's config.json that HubertConfig does not have, and the value each must have for
#: the two models to compute the same thing (see the module's docstring)
MERT_SETTINGS = {"feature_extractor_cqt": False, "deepnorm": False}
MERT_ONLY = ("feature_extractor_cqt", "feature_extractor_cqt_bins", "deepnorm", "attention_relax")
#: what a checkpoint saved before weight norm became a parametrisation calls the positional convolution's tensors
LEGACY_WEIGHT_NORM = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}


def hubert_config(config: dict[str, Any]):
    """The ``HubertConfig`` that computes what MERT's configuration does (CQT and DeepNorm off)."""
    from transformers import HubertConfig

    skip = {"model_type", "auto_map", "architectures", "_name_or_path", "transformers_version", *MERT_ONLY}
    return HubertConfig.from_dict({k: v for k, v in config.items() if k not in skip})


def hubert_key(key: str, expected: set[str]) -> str:
    """MERT's name of a tensor -> HubertModel's (``mert_model.`` prefix dropped, weight norm renamed)."""
    key = key.removeprefix("mert_model.")
    stem, _, leaf = key.rpartition(".")
    if leaf in LEGACY_WEIGHT_NORM and key not in expected:
        return f"{stem}.{LEGACY_WEIGHT_NORM[leaf]}"
    return key


def as_hubert(folder: Path, config: dict[str, Any]):
    """A ``HubertModel`` holding ``folder``'s MERT weights, in eval mode (float32, on the CPU)."""
    from transformers import HubertModel

    model = HubertModel(hubert_config(config))
    expected = set(model.state_dict())
    state = read_state_dict(folder, lambda key: hubert_key(key, expected))
    hint = f"this MERT folder is not HuBERT-shaped; run its own code with --embedding {folder},trust_remote_code=true"
    load_exactly(model, state, where=f"--embedding {folder}", hint=hint)
    return model.eval()


@register
class MERT(Family):
    name = "mert"
    citation = "MERT (Li et al. 2024)"
    model_types = ("mert_model",)

    def describe(self, folder: Path, config: dict[str, Any], *, trust_remote_code: bool) -> ModelInfo:
        if trust_remote_code:
            if "AutoModel" not in (config.get("auto_map") or {}):
                raise MuzarrError(
                    f"--embedding {folder}: trust_remote_code=true, but its config.json names no code to run "
                    "(auto_map.AutoModel): drop trust_remote_code"
                )
        else:
            for setting, value in MERT_SETTINGS.items():
                if bool(config.get(setting, False)) != value:
                    raise MuzarrError(
                        f"--embedding {folder}: its config.json sets {setting}={str(config[setting]).lower()}, which "
                        f"transformers' HubertModel does not compute; to run the folder's own modeling_MERT.py, "
                        f"give --embedding {folder},trust_remote_code=true (it executes that file)"
                    )
        return encoder_info(self.name, folder, config, trust_remote_code=trust_remote_code)

    def load(self, folder: Path, info: ModelInfo, *, device: str, precision: str) -> Backbone:
        if info.trust_remote_code:
            model = load_transformers(folder, device=device, precision=precision, trust_remote_code=True)
        else:
            model = as_hubert(folder, read_config(folder)).to(device, torch_dtype(precision))
        return TransformersBackbone(model, device=device, precision=precision)

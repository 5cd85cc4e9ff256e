"""Tiny pretrained-model folders for the embedding tests: random weights, saved as a hub folder is.

Each is what ``save_pretrained`` writes (``config.json``, ``model.safetensors``) plus the feature
extractor's ``preprocessor_config.json``, so muzarr loads it exactly as it loads a downloaded model.
The weights are drawn from a fixed seed: the same folder every time. A MERT folder is written as the
hub's is (MERT's config fields, its tensors under MERT's names): MERT's own code is not ours to
commit, and the folder it would run from is a HuBERT's weights under those names.
"""

from __future__ import annotations

import json
from pathlib import Path

# a HuBERT of MERT's shape in miniature (16 kHz, 2 transformer layers of 32): the one `train reproduce marble
# --smoke` embeds with
from training.experiments.marble import TINY_HUBERT


def save_tiny_hubert(folder: Path, *, seed: int = 0, sample_rate: int = 16000, normalize: bool = True, **config) -> Path:
    """A random-weight ``HubertModel`` saved with ``save_pretrained`` into ``folder`` (returned)."""
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(seed)
    model = HubertModel(HubertConfig(**{**TINY_HUBERT, **config})).eval()
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=sample_rate, do_normalize=normalize).save_pretrained(folder)
    return Path(folder)


def save_tiny_speech(folder: Path, model_type: str, *, seed: int = 0) -> Path:
    """A random-weight WavLM (``wavlm``) or data2vec-audio (``data2vec-audio``) of TINY_HUBERT's shape."""
    import torch
    from transformers import Data2VecAudioConfig, Data2VecAudioModel, Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    classes = {"wavlm": (WavLMConfig, WavLMModel), "data2vec-audio": (Data2VecAudioConfig, Data2VecAudioModel)}
    config_class, model_class = classes[model_type]
    if model_type == "wavlm":
        extra = {"num_buckets": 8, "max_bucket_distance": 20}
    else:
        extra = {"conv_pos_kernel_size": 5, "num_conv_pos_embeddings": 5}
    torch.manual_seed(seed)
    model_class(config_class(**{**TINY_HUBERT, **extra})).eval().save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(folder)
    return Path(folder)


#: MERT's own fields of config.json (configuration_MERT.py), with MERT-v1's values
MERT_FIELDS = {
    "feature_extractor_cqt": False, "feature_extractor_cqt_bins": 336, "deepnorm": False, "attention_relax": -1.0,
}  # fmt: skip
#: what the 2023 transformers MERT was saved with call the positional convolution's weight norm
MERT_WEIGHT_NORM = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}


def tiny_mert_config(**mert_fields) -> dict:
    """config.json of a tiny MERT-v1 as the hub writes it: HuBERT's fields, MERT's, its auto_map; 24 kHz."""
    from transformers import HubertConfig

    hubert = HubertConfig(**TINY_HUBERT, feat_proj_layer_norm=True).to_dict()
    for key in ("transformers_version", "architectures", "model_type", "_name_or_path"):
        hubert.pop(key, None)
    return {
        **hubert, **MERT_FIELDS, **mert_fields, "model_type": "mert_model", "architectures": ["MERTModel"],
        "auto_map": {"AutoConfig": "configuration_MERT.MERTConfig", "AutoModel": "modeling_MERT.MERTModel"},
        "sample_rate": 24000, "transformers_version": "4.25.1",
    }  # fmt: skip


def save_tiny_mert(folder: Path, *, seed: int = 0, weights: str = "safetensors", **mert_fields) -> Path:
    """A tiny MERT-v1 folder: random HuBERT weights stored under MERT's names (``weights``: safetensors or bin)."""
    import torch
    from safetensors.torch import save_file
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_mert_config(**mert_fields)
    torch.manual_seed(seed)
    model = HubertModel(HubertConfig(**TINY_HUBERT, feat_proj_layer_norm=True)).eval()
    state = {}
    for key, tensor in model.state_dict().items():
        for new, old in MERT_WEIGHT_NORM.items():
            key = key.replace(new, old)
        state[key] = tensor.detach().clone().contiguous()
    if weights == "safetensors":
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    Wav2Vec2FeatureExtractor(sampling_rate=24000, do_normalize=True).save_pretrained(folder)
    return folder


#: the trust_remote_code folder's own modelling code: ours, a HubertModel whose hidden states are negated,
#: so a test can tell that this file ran and not muzarr's HubertModel
REMOTE_CONFIGURATION = """from transformers import HubertConfig


class TinyMertConfig(HubertConfig):
    model_type = "mert_model"

    def __init__(self, feature_extractor_cqt=False, feature_extractor_cqt_bins=336, deepnorm=False,
                 attention_relax=-1.0, **kwargs):
        super().__init__(**kwargs)
        self.feature_extractor_cqt, self.feature_extractor_cqt_bins = feature_extractor_cqt, feature_extractor_cqt_bins
        self.deepnorm, self.attention_relax = deepnorm, attention_relax
"""
REMOTE_MODELING = """from transformers import HubertModel

from .configuration_tiny_mert import TinyMertConfig


class TinyMertModel(HubertModel):
    config_class = TinyMertConfig

    def forward(self, input_values, **kwargs):
        out = super().forward(input_values, **kwargs)
        out.hidden_states = tuple(-h for h in out.hidden_states)
        return out
"""


def save_remote_code_mert(folder: Path, *, seed: int = 0) -> Path:
    """A tiny MERT folder with deepnorm=true and its own code (auto_map -> modeling_tiny_mert.TinyMertModel)."""
    folder = save_tiny_mert(folder, seed=seed, deepnorm=True)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_tiny_mert.TinyMertConfig", "AutoModel": "modeling_tiny_mert.TinyMertModel",
    }  # fmt: skip
    config["architectures"] = ["TinyMertModel"]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "configuration_tiny_mert.py").write_text(REMOTE_CONFIGURATION)
    (folder / "modeling_tiny_mert.py").write_text(REMOTE_MODELING)
    return folder


def save_tiny_whisper(folder: Path, *, seed: int = 0) -> Path:
    """A random-weight Whisper (encoder and decoder, as the hub's) of 2 encoder layers of 32, 80 mels."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    config = WhisperConfig(
        d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=48, decoder_ffn_dim=48, num_mel_bins=80, max_target_positions=16, vocab_size=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )  # fmt: skip
    torch.manual_seed(seed)
    WhisperForConditionalGeneration(config).eval().save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return Path(folder)


def save_tiny_ast(folder: Path, *, seed: int = 0) -> Path:
    """A random-weight AST classifier (as the hub's AudioSet ones) over 32 mels and 128 frames (1.28 s)."""
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    config = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                       max_length=128, num_mel_bins=32, num_labels=3)  # fmt: skip
    torch.manual_seed(seed)
    ASTForAudioClassification(config).eval().save_pretrained(folder)
    ASTFeatureExtractor(num_mel_bins=32, max_length=128).save_pretrained(folder)
    return Path(folder)


def save_tiny_clap(folder: Path, *, seed: int = 0, fusion: bool = False) -> Path:
    """A random-weight CLAP (text and audio towers, as larger_clap_music) with a 3-stage HTSAT, 1 s input at 48 kHz."""
    import torch
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    config = ClapConfig(
        text_config={"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "intermediate_size": 16, "max_position_embeddings": 40},
        audio_config={"hidden_size": 64, "patch_embeds_hidden_size": 16, "depths": [1, 1, 2],
                      "num_attention_heads": [1, 2, 4], "window_size": 4, "spec_size": 64, "num_mel_bins": 16,
                      "enable_fusion": fusion, "projection_hidden_size": 32},
        projection_dim=24,
    )  # fmt: skip
    torch.manual_seed(seed)
    ClapModel(config).eval().save_pretrained(folder)
    extractor = ClapFeatureExtractor(feature_size=16, sampling_rate=48000, hop_length=480, max_length_s=1,
                                     fft_window_size=1024, padding="repeatpad",
                                     truncation="fusion" if fusion else "rand_trunc")  # fmt: skip
    extractor.save_pretrained(folder)
    return Path(folder)


def save_tiny_encodec(folder: Path, *, seed: int = 0, normalize: bool = False) -> Path:
    """A random-weight EnCodec of 24 kHz, 320 samples a frame (75 Hz, as encodec_24khz), 16-d latent."""
    import torch
    from transformers import EncodecConfig, EncodecFeatureExtractor, EncodecModel

    config = EncodecConfig(num_filters=4, hidden_size=16, upsampling_ratios=[8, 5, 4, 2], codebook_size=16,
                           codebook_dim=16, num_lstm_layers=1, target_bandwidths=[1.5], sampling_rate=24000,
                           normalize=normalize)  # fmt: skip
    torch.manual_seed(seed)
    EncodecModel(config).eval().save_pretrained(folder)
    EncodecFeatureExtractor(sampling_rate=24000).save_pretrained(folder)
    return Path(folder)


def save_tiny_bert(folder: Path) -> Path:
    """A text model's folder (BERT): not an audio encoder."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(folder)  # fmt: skip
    return Path(folder)

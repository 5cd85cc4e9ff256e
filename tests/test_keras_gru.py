"""KerasGRU computes Keras 1's GRU equations, which differ from nn.GRU's; the CRNN's gru option."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.errors import MuzarrError
from training.models.crnn import ChoiCRNN
from training.models.keras_gru import KerasGRU

BATCH, STEPS, FEATURES, HIDDEN = 3, 7, 5, 4


def np_hard_sigmoid(x: np.ndarray) -> np.ndarray:
    return np.clip(0.2 * x + 0.5, 0.0, 1.0)


def np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def keras1_gru(x: np.ndarray, layers: list[dict[str, np.ndarray]], inner) -> tuple[np.ndarray, np.ndarray]:
    """Keras 1 ``GRU.step`` over a sequence, layer after layer; weights per gate, Keras orientation."""
    last = []
    for p in layers:
        h = np.zeros((x.shape[0], p["U_z"].shape[0]))
        steps = []
        for t in range(x.shape[1]):
            x_t = x[:, t]
            z = inner(x_t @ p["W_z"] + h @ p["U_z"] + p["b_z"])
            r = inner(x_t @ p["W_r"] + h @ p["U_r"] + p["b_r"])
            hh = np.tanh(x_t @ p["W_h"] + (r * h) @ p["U_h"] + p["b_h"])
            h = z * h + (1 - z) * hh
            steps.append(h)
        x = np.stack(steps, axis=1)
        last.append(h)
    return x, np.stack(last)


def torch_gru(x: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """PyTorch's documented GRU equations (one layer): the reset gate scales h U_h + b_hn."""
    h = np.zeros((x.shape[0], p["U_z"].shape[0]))
    steps = []
    for t in range(x.shape[1]):
        x_t = x[:, t]
        r = np_sigmoid(x_t @ p["W_r"] + p["b_r"] + h @ p["U_r"])
        z = np_sigmoid(x_t @ p["W_z"] + p["b_z"] + h @ p["U_z"])
        n = np.tanh(x_t @ p["W_h"] + p["b_h"] + r * (h @ p["U_h"]))
        h = (1 - z) * n + z * h
        steps.append(h)
    return np.stack(steps, axis=1)


def gate_weights(gru: KerasGRU) -> list[dict[str, np.ndarray]]:
    """The per-gate Keras matrices of every layer (z, r, h order)."""
    layers = []
    for layer in gru.layers:
        W = layer.kernel.detach().numpy().astype(np.float64)
        U = layer.recurrent_kernel.detach().numpy().astype(np.float64)
        b = layer.bias.detach().numpy().astype(np.float64)
        p = {}
        for i, gate in enumerate("zrh"):
            cols = slice(i * gru.hidden_size, (i + 1) * gru.hidden_size)
            p[f"W_{gate}"], p[f"U_{gate}"], p[f"b_{gate}"] = W[:, cols], U[:, cols], b[cols]
        layers.append(p)
    return layers


def random_gru(inner_activation: str, num_layers: int, seed: int = 0) -> KerasGRU:
    torch.manual_seed(seed)
    gru = KerasGRU(FEATURES, HIDDEN, num_layers=num_layers, inner_activation=inner_activation).double()
    with torch.no_grad():
        for layer in gru.layers:
            layer.bias.uniform_(-0.5, 0.5)  # Keras starts at zero; non-zero biases test their placement
    return gru


def sequence(seed: int = 1) -> np.ndarray:
    # scale 3 drives many gate pre-activations past ±2.5, where hard_sigmoid clips
    return 3.0 * np.random.default_rng(seed).standard_normal((BATCH, STEPS, FEATURES))


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("inner_activation, inner", [("hard_sigmoid", np_hard_sigmoid), ("sigmoid", np_sigmoid)])
def test_matches_keras1_equations(inner_activation, inner, num_layers):
    gru = random_gru(inner_activation, num_layers)
    x = sequence()
    outputs, last_state = gru(torch.from_numpy(x))
    expected_outputs, expected_last = keras1_gru(x, gate_weights(gru), inner)
    assert outputs.shape == (BATCH, STEPS, HIDDEN)
    assert last_state.shape == (num_layers, BATCH, HIDDEN)
    np.testing.assert_allclose(outputs.detach().numpy(), expected_outputs, atol=1e-6, rtol=0)
    np.testing.assert_allclose(last_state.detach().numpy(), expected_last, atol=1e-6, rtol=0)


def test_hard_sigmoid_is_keras_not_pytorch_hardsigmoid():
    gru = random_gru("hard_sigmoid", 1)
    x = sequence()
    p = gate_weights(gru)[0]
    pre_activations = x @ p["W_z"] + p["b_z"]
    assert (np.abs(pre_activations) > 2.5).any() and (np.abs(pre_activations) < 2.5).any()
    outputs, _ = gru(torch.from_numpy(x))
    as_sigmoid, _ = keras1_gru(x, [p], np_sigmoid)
    assert np.abs(outputs.detach().numpy() - as_sigmoid).max() > 1e-2


def equivalent_torch_gru(p: dict[str, np.ndarray]) -> nn.GRU:
    """nn.GRU with the same W, U and one bias per gate (rows r, z, n; the recurrent bias zero)."""
    gru = nn.GRU(FEATURES, HIDDEN, batch_first=True).double()
    with torch.no_grad():
        gru.weight_ih_l0.copy_(torch.from_numpy(np.concatenate([p["W_r"].T, p["W_z"].T, p["W_h"].T])))
        gru.weight_hh_l0.copy_(torch.from_numpy(np.concatenate([p["U_r"].T, p["U_z"].T, p["U_h"].T])))
        gru.bias_ih_l0.copy_(torch.from_numpy(np.concatenate([p["b_r"], p["b_z"], p["b_h"]])))
        gru.bias_hh_l0.zero_()
    return gru


def test_differs_from_nn_gru_only_by_the_reset_gate_placement():
    keras = random_gru("sigmoid", 1)  # same activation as nn.GRU: only the reset gate's place differs
    p = gate_weights(keras)[0]
    torch_version = equivalent_torch_gru(p)
    x = sequence()
    keras_out, _ = keras(torch.from_numpy(x))
    torch_out, _ = torch_version(torch.from_numpy(x))
    keras_out, torch_out = keras_out.detach().numpy(), torch_out.detach().numpy()

    np.testing.assert_allclose(torch_out, torch_gru(x, p), atol=1e-6, rtol=0)
    np.testing.assert_allclose(keras_out, keras1_gru(x, [p], np_sigmoid)[0], atol=1e-6, rtol=0)
    assert np.abs(keras_out - torch_out).max() > 1e-2

    # (r * h) U_h == r * (h U_h) when U_h = 0: then the two agree, so the placement is the difference
    with torch.no_grad():
        keras.layers[0].recurrent_kernel[:, 2 * HIDDEN :] = 0
        torch_version.weight_hh_l0[2 * HIDDEN :] = 0
    np.testing.assert_allclose(
        keras(torch.from_numpy(x))[0].detach().numpy(),
        torch_version(torch.from_numpy(x))[0].detach().numpy(),
        atol=1e-12,
        rtol=0,
    )


def test_initial_state_and_last_state():
    gru = random_gru("hard_sigmoid", 2)
    x = torch.from_numpy(sequence())
    h0 = torch.randn(2, BATCH, HIDDEN, dtype=torch.float64)
    outputs, last_state = gru(x, h0)
    torch.testing.assert_close(last_state[-1], outputs[:, -1])
    assert not torch.allclose(outputs, gru(x)[0])
    with pytest.raises(MuzarrError, match=r"h0 of shape \(1, 3, 4\)"):
        gru(x, h0[:1])
    with pytest.raises(MuzarrError, match=r"must be \(B, T, 5\)"):
        gru(x[..., :3])


def test_keras1_initialisation():
    torch.manual_seed(0)
    layer = KerasGRU(128, 32).layers[0]
    limit = np.sqrt(6 / (128 + 32))  # glorot_uniform of each (128, 32) gate matrix
    assert layer.kernel.abs().max() <= limit and layer.kernel.abs().max() > 0.9 * limit
    for block in layer.recurrent_kernel.detach().split(32, dim=1):  # orthogonal, scale 1.1
        torch.testing.assert_close(block.T @ block, 1.21 * torch.eye(32), atol=1e-5, rtol=0)
    assert not layer.bias.any()


def test_gradients_reach_every_parameter():
    gru = KerasGRU(FEATURES, HIDDEN, num_layers=2)
    x = torch.randn(BATCH, STEPS, FEATURES, requires_grad=True)
    outputs, last_state = gru(x)
    (outputs.square().sum() + last_state.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, param in gru.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name

    torch.manual_seed(0)
    model = ChoiCRNN(5, (96, 262), gru="keras")
    model(torch.randn(2, 96, 262)).sum().backward()
    for name, param in model.rnn.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "gru, rnn_type, expected",
    [("keras", KerasGRU, 396_786 - 2 * 1440 + 2 * 96), ("torch", nn.GRU, 394_290)],
)
def test_crnn_parameter_counts(gru, rnn_type, expected):
    model = ChoiCRNN(50, (96, 1440), gru=gru)
    assert isinstance(model.rnn, rnn_type)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_crnn_default_is_keras():
    assert isinstance(ChoiCRNN(50, (96, 262)).rnn, KerasGRU)


def test_crnn_unknown_gru_lists_both():
    with pytest.raises(MuzarrError, match=r"gru='cudnn' is not one of \['keras', 'torch'\]"):
        ChoiCRNN(50, (96, 262), gru="cudnn")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"inner_activation": "relu"}, r"inner_activation='relu' is not one of \['hard_sigmoid', 'sigmoid'\]"),
        ({"num_layers": 0}, r"num_layers=0 must be a positive integer"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(MuzarrError, match=match):
        KerasGRU(FEATURES, HIDDEN, **kwargs)

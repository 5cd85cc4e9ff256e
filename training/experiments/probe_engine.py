"""Many small probes trained in one batched pass, each exactly as if it were trained alone.

A probe reads one vector per clip (one layer of an embedding, or their mean) and is an MLP
(Linear → ReLU → Dropout → Linear, MARBLE's ``MLPDecoder``) or a linear layer. The ``P`` probes of
one run are held as stacked weights (``[P, in, out]``) and run with ``torch.baddbmm``: one
matrix product per step for all of them instead of ``P`` small ones. What makes the batched pass
equal ``P`` independent runs:

- the loss is the sum of the probes' own mean losses, so each probe's gradient is its own;
- Adam (:class:`StackedAdam`: torch's own update, run on each probe's slices) keeps moments, a
  learning rate and a step count per probe;
- each probe has its own plateau schedule (:class:`Plateau`, torch's ``ReduceLROnPlateau``) and
  early stopping (Lightning's ``EarlyStopping``: a strictly better value resets the count), and a
  stopped probe is frozen (no update, no Adam step) while the others go on;
- each probe draws its initial weights and dropout masks from its own generator (``seeds``): a probe
  trained with others gets the same numbers as trained alone; the batches' order comes from the run's seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

__all__ = ["PROBE_KINDS", "Plateau", "ProbeFit", "ProbeSettings", "StackedAdam", "fit_probes", "forward", "init_weights",
           "monitor_values", "predict", "probe_losses", "scores_of", "stack"]

#: the probes ``train probe --probe`` can train
PROBE_KINDS = ("mlp", "linear")


@dataclass(frozen=True)
class ProbeSettings:
    """How every probe of a pass trains (MARBLE v2's probe configs: see ``docs/probes.md``).

    ``kind``: mlp (``hidden`` units, ReLU, ``dropout``) or linear; Adam with ``lr`` (and L2
    ``weight_decay``); the learning rate times ``plateau_factor`` after ``plateau_patience`` epochs
    without a better validation metric; stop after ``patience`` such epochs or ``max_epochs``;
    ``batch_size`` clips per step. The weights of the best validation epoch are kept.
    """

    kind: str = "mlp"
    hidden: int = 512
    dropout: float = 0.2
    lr: float = 5e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    max_epochs: int = 100
    patience: int = 20
    plateau_patience: int = 6
    plateau_factor: float = 0.5


@dataclass(frozen=True)
class ProbeFit:
    """One probe after training: its best-epoch weights and how it got there.

    ``weights``: name → tensor of this probe alone (``w1 [in, hidden]``, ``b1``, ``w2``, ``b2``; linear:
    ``w [in, out]``, ``b``). ``best_epoch`` counts from 1 (0: never validated better than nothing);
    ``epochs`` run; ``best_value`` the monitored validation metric there; ``lr`` the last learning rate.
    """

    weights: dict[str, torch.Tensor]
    best_epoch: int
    epochs: int
    best_value: float
    lr: float


class StackedAdam:
    """Adam over stacked parameters ``[P, ...]``: a learning rate, a step count and moments per probe.

    Each probe's update is torch's own (``torch.optim.adam.adam``, the function ``torch.optim.Adam``
    runs; fused where the device has the fused kernel), applied to that probe's slices of the stacked
    tensors: a probe left out of a step keeps its weights, moments and step count, as an optimizer
    of its own would.
    """

    def __init__(self, params: dict[str, torch.Tensor], lr: float, *, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:  # fmt: skip
        self.params = params
        n_probes = len(next(iter(params.values())))
        self.lr = np.full(n_probes, float(lr))  # changed by each probe's plateau
        self.weight_decay, self.betas, self.eps = weight_decay, betas, eps
        self.exp_avg = {name: torch.zeros_like(p) for name, p in params.items()}
        self.exp_avg_sq = {name: torch.zeros_like(p) for name, p in params.items()}
        device = next(iter(params.values())).device
        self.steps = [[torch.zeros((), dtype=torch.float32, device=device) for _ in params] for _ in range(n_probes)]
        self.fused: bool | None = None  # decided at the first step: the fused kernel where the device has one

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor], probes: np.ndarray) -> None:
        """One step of ``probes`` (indices), ``grads[name][j]`` the gradient of probe ``probes[j]``."""
        for j, p in enumerate(probes.tolist()):
            self._adam([value[p] for value in self.params.values()], [grads[name][j] for name in self.params],
                       [m[p] for m in self.exp_avg.values()], [v[p] for v in self.exp_avg_sq.values()], self.steps[p],
                       lr=float(self.lr[p]))  # fmt: skip

    def _adam(self, params, grads, exp_avgs, exp_avg_sqs, steps, *, lr: float) -> None:
        from torch.optim.adam import adam

        settings = {"amsgrad": False, "beta1": self.betas[0], "beta2": self.betas[1], "lr": lr, "eps": self.eps,
                    "weight_decay": self.weight_decay, "maximize": False, "capturable": False, "differentiable": False,
                    "has_complex": False}  # fmt: skip
        if self.fused is not False:
            try:
                adam(params, grads, exp_avgs, exp_avg_sqs, [], steps, foreach=False, fused=True, **settings)
                self.fused = True
                return
            except RuntimeError:
                if self.fused:  # it ran before: a real error
                    raise
                self.fused = False  # no fused kernel for this device: the single-tensor update, same formula
        adam(params, grads, exp_avgs, exp_avg_sqs, [], steps, foreach=False, fused=False, **settings)


class Plateau:
    """Per-probe ``ReduceLROnPlateau(mode="max", factor, patience)`` with torch's defaults
    (relative threshold 1e-4, no cooldown, no minimum, changes under 1e-8 skipped)."""

    def __init__(self, n: int, *, factor: float, patience: int, threshold: float = 1e-4) -> None:
        self.factor, self.patience, self.threshold = factor, patience, threshold
        self.best = np.full(n, -np.inf)
        self.bad_epochs = np.zeros(n, dtype=np.int64)

    def step(self, values: np.ndarray, probes: np.ndarray, lr: np.ndarray) -> None:
        """The epoch's validation ``values`` of ``probes``: lower ``lr[p]`` where a probe has waited too long."""
        for value, p in zip(values, probes):
            if value > self.best[p] * (1 + self.threshold):  # torch's "rel" threshold, mode max; NaN is never better
                self.best[p], self.bad_epochs[p] = value, 0
            else:
                self.bad_epochs[p] += 1
            if self.bad_epochs[p] > self.patience:
                new = float(lr[p]) * self.factor
                if float(lr[p]) - new > 1e-8:
                    lr[p] = new
                self.bad_epochs[p] = 0


def init_weights(kind: str, seeds: list[int], n_in: int, n_out: int, *, hidden: int) -> tuple[dict[str, torch.Tensor], list[torch.Generator]]:
    """Stacked initial weights (``nn.Linear``'s: uniform in ±1/sqrt(fan_in), weights then bias) and each
    probe's generator, left where its dropout masks go on."""
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    shapes = [("w1", n_in, hidden), ("b1", n_in, hidden), ("w2", hidden, n_out), ("b2", hidden, n_out)] if kind == "mlp" \
        else [("w", n_in, n_out), ("b", n_in, n_out)]  # fmt: skip
    weights: dict[str, list[torch.Tensor]] = {name: [] for name, _, _ in shapes}
    for generator in generators:
        for name, fan_in, width in shapes:
            bound = 1 / math.sqrt(fan_in)
            shape = (fan_in, width) if name.startswith("w") else (width,)
            # drawn in nn.Linear's [out, in] order, so that a probe's numbers are a torch Linear's
            values = torch.rand(shape[::-1], generator=generator) * 2 * bound - bound
            weights[name].append(values.T.contiguous() if name.startswith("w") else values)
    return {name: torch.stack(values) for name, values in weights.items()}, generators


def forward(kind: str, params: dict[str, torch.Tensor], x: torch.Tensor, *, masks: torch.Tensor | None = None) -> torch.Tensor:
    """Logits ``[P, B, C]`` of the stacked probes on ``x [P, B, D]``; ``masks`` (``[P, B, hidden]``,
    already scaled by 1/(1 - p)) is the dropout of training."""
    if kind == "linear":
        return torch.baddbmm(params["b"].unsqueeze(1), x, params["w"])
    hidden = torch.relu(torch.baddbmm(params["b1"].unsqueeze(1), x, params["w1"]))
    if masks is not None:
        hidden = hidden * masks
    return torch.baddbmm(params["b2"].unsqueeze(1), hidden, params["w2"])


def probe_losses(logits: torch.Tensor, y: torch.Tensor, *, task: str) -> torch.Tensor:
    """Each probe's mean loss ``[P]``: BCE-with-logits (multilabel) or cross-entropy (multiclass)."""
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, y.expand_as(logits), reduction="none").mean(dim=(1, 2))
    n_probes, batch, n_classes = logits.shape
    losses = F.cross_entropy(logits.reshape(-1, n_classes), y.repeat(n_probes), reduction="none")
    return losses.view(n_probes, batch).mean(dim=1)


def monitor_values(scores: np.ndarray, targets: np.ndarray, *, task: str) -> np.ndarray:
    """The monitored validation metric of each probe from ``scores [P, N, C]``: macro ROC-AUC over the
    tags with both classes (multilabel; NaN when none has, as :func:`training.run.metrics.multilabel_metrics`),
    or accuracy (multiclass).

    ROC-AUC is the Mann-Whitney statistic on average ranks: sklearn's ``roc_auc_score`` for every
    tag of every probe at once."""
    if task == "multiclass":
        return (scores.argmax(axis=2) == targets[None]).mean(axis=1)
    positives = targets.sum(axis=0)
    usable = np.flatnonzero((positives > 0) & (positives < len(targets)))
    if not len(usable):
        return np.full(len(scores), np.nan)
    ranks = rankdata(scores[:, :, usable], axis=1)  # [P, N, tags]
    pos = targets[:, usable].astype(bool)
    n_pos, n_neg = positives[usable], len(targets) - positives[usable]
    rank_sum = np.where(pos[None], ranks, 0.0).sum(axis=1)
    auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return auc.mean(axis=1)


@torch.no_grad()
def predict(kind: str, params: dict[str, torch.Tensor], x: torch.Tensor, *, chunk: int = 4096) -> torch.Tensor:
    """Logits ``[P, N, C]`` of every example of ``x [P, N, D]`` (eval mode: no dropout), in chunks."""
    return torch.cat([forward(kind, params, x[:, i : i + chunk]) for i in range(0, x.shape[1], chunk)], dim=1)


def scores_of(logits: torch.Tensor, *, task: str) -> np.ndarray:
    """Probabilities as the training loop's evaluation gives them: sigmoid (multilabel) or softmax (multiclass)."""
    probs = torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=-1)
    return probs.float().cpu().numpy()


def fit_probes(
    x_train: torch.Tensor, y_train: torch.Tensor, x_valid: torch.Tensor, y_valid: np.ndarray, *,
    settings: ProbeSettings, task: str, n_classes: int, seeds: list[int], order_seed: int,
    on_epoch: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
) -> list[ProbeFit]:  # fmt: skip
    """Train one probe per input: ``x_train [P, N, D]`` (probe ``p`` reads ``x_train[p]``) on
    ``y_train`` (``[N, C]`` float multi-hot, or ``[N]`` class indices), validated on ``x_valid``
    against ``y_valid`` every epoch.

    ``seeds[p]`` seeds probe ``p``'s initial weights and dropout; ``order_seed`` the batches'
    order (the same for every probe). ``on_epoch(epoch, active, values)`` hears each epoch's
    validation values of the probes still training. Everything runs on ``x_train``'s device.
    """
    device = x_train.device
    n_probes, n_train, n_in = x_train.shape
    kind = settings.kind
    params, generators = init_weights(kind, seeds, n_in, n_classes, hidden=settings.hidden)
    params = {name: value.to(device) for name, value in params.items()}
    optimizer = StackedAdam(params, settings.lr, weight_decay=settings.weight_decay)
    plateau = Plateau(n_probes, factor=settings.plateau_factor, patience=settings.plateau_patience)
    best = {name: value.clone() for name, value in params.items()}
    best_value = np.full(n_probes, -np.inf)
    best_epoch = np.zeros(n_probes, dtype=np.int64)
    epochs = np.zeros(n_probes, dtype=np.int64)
    waited = np.zeros(n_probes, dtype=np.int64)
    running = np.ones(n_probes, dtype=bool)
    keep = 1.0 - settings.dropout
    dropping = kind == "mlp" and settings.dropout > 0
    masks = torch.empty((n_probes, settings.batch_size, settings.hidden)) if dropping else None
    for epoch in range(1, settings.max_epochs + 1):
        active = np.flatnonzero(running)
        if not len(active):
            break
        index = torch.from_numpy(active).to(device)
        everyone = len(active) == n_probes
        order = torch.from_numpy(np.random.default_rng([order_seed, epoch]).permutation(n_train)).to(device)
        for start in range(0, n_train, settings.batch_size):
            batch = order[start : start + settings.batch_size]
            x = x_train[:, batch] if everyone else x_train[:, batch][index]
            leaves = {name: (value if everyone else value[index]).detach().requires_grad_() for name, value in params.items()}
            drop = None
            if dropping:  # each probe's mask from its own generator: the same draws alone or batched
                drop = masks[: len(active), : len(batch)]
                for j, p in enumerate(active.tolist()):
                    drop[j].bernoulli_(keep, generator=generators[p])
                drop = drop.to(device) / keep
            losses = probe_losses(forward(kind, leaves, x, masks=drop), y_train[batch], task=task)
            grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
            optimizer.step(dict(zip(leaves, grads)), active)
        epochs[active] = epoch
        valid_x = x_valid if everyone else x_valid[index]
        values = monitor_values(scores_of(predict(kind, {n: v if everyone else v[index] for n, v in params.items()},
                                                  valid_x), task=task), y_valid, task=task)  # fmt: skip
        better = values > best_value[active]  # strictly better (Lightning's EarlyStopping, min_delta 0); NaN never
        improved = active[better]
        if len(improved):
            where = torch.from_numpy(improved).to(device)
            for name, value in params.items():
                best[name][where] = value[where]
            best_value[improved], best_epoch[improved], waited[improved] = values[better], epoch, 0
        waited[active[~better]] += 1
        plateau.step(values, active, optimizer.lr)
        running[active[waited[active] >= settings.patience]] = False
        if on_epoch is not None:
            on_epoch(epoch, active, values)
    fits = []
    for p in range(n_probes):
        # a probe never better than nothing (a validation split without a scorable tag): its last weights
        source = best if best_epoch[p] else params
        fits.append(ProbeFit({name: value[p].detach().clone() for name, value in source.items()}, int(best_epoch[p]),
                             int(epochs[p]), float(best_value[p]), float(optimizer.lr[p])))  # fmt: skip
    return fits


def stack(fits: list[ProbeFit]) -> dict[str, torch.Tensor]:
    """The probes' kept weights stacked again (``[P, ...]``), for :func:`predict`."""
    return {name: torch.stack([fit.weights[name] for fit in fits]) for name in fits[0].weights}

"""Training-batch augmentation (training/data/augment.py): what each transform changes, checked cell by cell.

Inputs are random normals (or dB-like values), so no input cell equals a mask value and every
changed cell is one the transform touched. Expected values are worked out here from the input:
``torch.roll`` for shifts, the ratio or difference for gains, ``lam * x + (1 - lam) * x[perm]``
with ``lam`` and ``perm`` read back from the targets of a batch whose targets are one class each.
"""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.errors import MuzarrError
from training.data.augment import PRESETS, Augment, Augmenter, format_augment, parse_augment

MASK_VALUE = -7.25  # never drawn from randn, exactly representable


def make(
    augment: Augment, *, input_kind: str = "logmel", task: str = "multilabel", n_classes: int = 4, seed: int = 0
) -> Augmenter:
    return Augmenter(augment, input_kind=input_kind, task=task, n_classes=n_classes, seed=seed)


def batch(shape: tuple[int, ...], *, n_classes: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    y = (torch.rand(shape[0], n_classes, generator=gen) < 0.5).float()
    return x, y


def runs(flags: torch.Tensor) -> list[tuple[int, int]]:
    """``(start, width)`` of each run of True in a 1-D bool tensor."""
    found, start = [], None
    for i, flag in enumerate([*flags.tolist(), False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            found.append((start, i - start))
            start = None
    return found


# -- SpecAugment masks -------------------------------------------------------------------


@pytest.mark.parametrize("time_masks", [1, 3])
@pytest.mark.parametrize(
    "kind, shape",
    [("logmel", (48, 16, 200)), ("waveform", (48, 1000)), ("waveform", (48, 2, 1000))],
    ids=["logmel", "waveform", "stereo"],
)
def test_time_masks_set_whole_frames_to_mask_value_and_nothing_else(kind, shape, time_masks):
    width = 0.1
    x, y = batch(shape)
    original = x.clone()
    augment = Augment(time_masks=time_masks, time_mask_width=width, mask_value=MASK_VALUE)
    out, targets = make(augment, input_kind=kind)(x, y)

    assert torch.equal(x, original)  # the input is left alone
    assert targets is y
    assert out.shape == x.shape and out.dtype == x.dtype
    changed = out != x
    assert torch.all(out[changed] == MASK_VALUE)
    assert torch.equal(out[~changed], x[~changed])
    frames = changed.reshape(len(x), -1, shape[-1])
    masked = frames.any(dim=1)
    assert torch.equal(masked, frames.all(dim=1))  # a mask covers every band/channel of its frames
    max_width = math.floor(width * shape[-1])
    widths = []
    for row in masked:
        spans = runs(row)
        assert len(spans) <= time_masks
        assert sum(w for _, w in spans) <= time_masks * max_width
        if time_masks == 1:
            assert all(w <= max_width for _, w in spans)
        widths += [w for _, w in spans]
    assert masked.any(dim=1).float().mean() > 0.5  # most examples got a mask ...
    assert len(set(widths)) > 5  # ... of varied widths


@pytest.mark.parametrize("freq_masks", [1, 2])
def test_freq_masks_set_whole_mel_bands_to_mask_value_and_nothing_else(freq_masks):
    max_width = 5
    x, y = batch((48, 40, 30))
    out, _ = make(Augment(freq_masks=freq_masks, freq_mask_width=max_width, mask_value=MASK_VALUE))(x, y)

    changed = out != x
    assert torch.all(out[changed] == MASK_VALUE)
    assert torch.equal(out[~changed], x[~changed])
    masked = changed.any(dim=2)
    assert torch.equal(masked, changed.all(dim=2))  # a mask covers every frame of its bands
    for row in masked:
        spans = runs(row)
        assert len(spans) <= freq_masks
        assert sum(w for _, w in spans) <= freq_masks * max_width
        if freq_masks == 1:
            assert all(w <= max_width for _, w in spans)
    assert masked.any(dim=1).float().mean() > 0.5


def test_freq_mask_width_wider_than_the_mel_axis_masks_at_most_all_of_it():
    x, y = batch((16, 4, 10))
    out, _ = make(Augment(freq_masks=1, freq_mask_width=50, mask_value=MASK_VALUE))(x, y)
    changed = out != x
    assert torch.equal(changed.any(dim=2), changed.all(dim=2))
    assert changed.all(dim=(1, 2)).any()  # some example lost every band


def test_specaugment_preset_masks_frames_and_bands():
    x, y = batch((8, 32, 100))
    out, _ = make(PRESETS["specaugment"])(x, y)
    changed = out != x
    assert torch.all(out[changed] == 0.0)
    assert changed.all(dim=1).any() and changed.all(dim=2).any()


# -- gain --------------------------------------------------------------------------------


def test_gain_scales_each_waveform_by_10_to_the_g_over_20_with_g_in_range():
    gain_db = 6.0
    x, y = batch((16, 500))
    out, targets = make(Augment(gain_db=gain_db), input_kind="waveform")(x, y)
    assert targets is y
    gains = []
    for before, after in zip(x, out):
        scale = (after / before).median()
        assert torch.allclose(after, before * scale, rtol=5e-7, atol=0)  # one factor per example
        gains.append(20 * math.log10(scale.item()))
    assert all(-gain_db - 1e-4 <= g <= gain_db + 1e-4 for g in gains)
    assert len({round(g, 4) for g in gains}) == len(gains)  # every example its own gain
    assert max(gains) - min(gains) > gain_db  # spread over the range, both signs
    assert min(gains) < 0 < max(gains)


def test_gain_adds_g_decibels_to_each_log_mel():
    gain_db = 3.0
    x, y = batch((16, 8, 20))
    x = x * 10 - 40  # dB-like values
    out, _ = make(Augment(gain_db=gain_db))(x, y)
    gains = []
    for before, after in zip(x, out):
        g = (after - before).median()
        assert torch.allclose(after, before + g, rtol=0, atol=1e-5)  # one offset per example
        gains.append(g.item())
    assert all(-gain_db - 1e-5 <= g <= gain_db + 1e-5 for g in gains)
    assert len({round(g, 4) for g in gains}) == len(gains)
    assert min(gains) < 0 < max(gains)


# -- time shift ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(16, 6, 50), (16, 400)], ids=["logmel", "waveform"])
def test_time_shift_is_a_per_example_torch_roll_within_range(shape):
    kind = "logmel" if len(shape) == 3 else "waveform"
    fraction = 0.2
    reach = math.floor(fraction * shape[-1])
    x, y = batch(shape)
    out, _ = make(Augment(time_shift=fraction), input_kind=kind)(x, y)
    shifts = []
    for before, after in zip(x, out):
        matches = [k for k in range(-reach, reach + 1) if torch.equal(after, torch.roll(before, k, dims=-1))]
        assert len(matches) == 1, "each example is its input rolled by one k in range"
        shifts.append(matches[0])
    assert len(set(shifts)) > 4
    assert min(shifts) < 0 < max(shifts)


# -- mixup ---------------------------------------------------------------------------------


def recover_mixup(targets: torch.Tensor) -> tuple[float, list[int]]:
    """``lam`` and ``perm`` from mixed targets of a batch where example ``i`` is class ``i``."""
    lams, perm = [], []
    for i, row in enumerate(targets):
        others = [j for j in torch.nonzero(row).flatten().tolist() if j != i]
        assert len(others) <= 1
        if others:
            lams.append(row[i].item())
            assert row[others[0]].item() == pytest.approx(1 - row[i].item(), abs=1e-6)
        perm.append(others[0] if others else i)
    assert lams, "some example was paired with another"
    assert max(lams) - min(lams) < 1e-6, "one lambda per batch"
    assert sorted(perm) == list(range(len(targets)))
    return lams[0], perm


@pytest.mark.parametrize("task", ["multilabel", "multiclass"])
def test_mixup_mixes_inputs_and_targets_with_one_lambda_and_permutation(task):
    n = 8
    x, _ = batch((n, 5, 12), n_classes=n)
    y = torch.eye(n) if task == "multilabel" else torch.arange(n)
    # multiclass: two more classes than examples, which no row may get weight on
    augmenter = make(Augment(mixup_alpha=1.0), task=task, n_classes=n if task == "multilabel" else n + 2)
    out, targets = augmenter(x, y)

    assert targets.dtype == torch.float32 and targets.shape == (n, augmenter.n_classes)
    assert torch.allclose(targets.sum(dim=1), torch.ones(n), atol=1e-6)  # rows are class probabilities
    assert torch.all(targets >= 0)
    lam, perm = recover_mixup(targets)
    assert 0 < lam < 1
    assert torch.allclose(out, lam * x + (1 - lam) * x[perm], rtol=0, atol=1e-6)


def test_mixup_lambdas_follow_the_beta_distribution_over_batches():
    n, alpha = 4, 0.2
    augmenter = make(Augment(mixup_alpha=alpha), task="multiclass", n_classes=n)
    x, _ = batch((n, 3, 5))
    lams = []
    for _ in range(300):
        _, targets = augmenter(x, torch.arange(n))
        lams.append(targets[0].max().item())  # max(lam, 1 - lam) or 1 when unpaired
    # Beta(0.2, 0.2) piles up near 0 and 1: most batches are nearly one example
    assert sum(value > 0.9 for value in lams) / len(lams) > 0.5


def test_mixup_on_tables():
    x, y = batch((10, 57), n_classes=3)
    out, targets = make(Augment(mixup_alpha=0.4), input_kind="tabular", n_classes=3)(x, y)
    assert out.shape == x.shape and targets.shape == (10, 3)
    assert not torch.equal(out, x)


def test_mixup_refuses_unlabelled_multiclass_targets():
    x, _ = batch((4, 8, 10))
    with pytest.raises(MuzarrError, match=r"class index -1.*unlabelled"):
        make(Augment(mixup_alpha=0.4), task="multiclass", n_classes=4)(x, torch.tensor([0, 1, -1, 2]))


# -- reproducibility ------------------------------------------------------------------------

EVERYTHING = Augment(time_masks=2, freq_masks=2, freq_mask_width=3, gain_db=6, time_shift=0.1, mixup_alpha=0.3)


def run_batches(augmenter: Augmenter, epoch: int, n_batches: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    augmenter.set_epoch(epoch)
    x, y = batch((8, 12, 40))
    return [augmenter(x, y) for _ in range(n_batches)]


def test_same_seed_same_outputs_batch_for_batch_different_epoch_or_seed_differs():
    first = run_batches(make(EVERYTHING, seed=5), epoch=2)
    second = run_batches(make(EVERYTHING, seed=5), epoch=2)
    for (x1, y1), (x2, y2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(first[0][0], first[1][0])  # each batch of an epoch draws anew
    other_epoch = run_batches(make(EVERYTHING, seed=5), epoch=3)
    other_seed = run_batches(make(EVERYTHING, seed=6), epoch=2)
    for (x1, _), (x2, _), (x3, _) in zip(first, other_epoch, other_seed):
        assert not torch.equal(x1, x2) and not torch.equal(x1, x3)


def test_set_epoch_restarts_the_batch_counter():
    augmenter = make(EVERYTHING, seed=5)
    run_batches(augmenter, epoch=0, n_batches=4)  # a used augmenter ...
    again = run_batches(augmenter, epoch=2)
    fresh = run_batches(make(EVERYTHING, seed=5), epoch=2)  # ... resumes like a fresh one
    for (x1, y1), (x2, y2) in zip(again, fresh):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def accelerators() -> list[str]:
    found = ["cuda"] if torch.cuda.is_available() else []
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        found.append("mps")
    return found


NO_ACCELERATOR = pytest.param("cuda", marks=pytest.mark.skip("no CUDA or MPS device here"))


@pytest.mark.parametrize("device", accelerators() or [NO_ACCELERATOR])
def test_accelerator_gives_the_cpu_numbers(device):
    augment = Augment(time_masks=2, freq_masks=2, freq_mask_width=3, gain_db=6, time_shift=0.1)
    (x_cpu, y_cpu), = run_batches(make(augment, seed=3), epoch=1, n_batches=1)
    augmenter = make(augment, seed=3)
    augmenter.set_epoch(1)
    x, y = batch((8, 12, 40))
    x_dev, y_dev = augmenter(x.to(device), y.to(device))
    assert x_dev.device.type == device
    assert torch.equal(x_dev.cpu(), x_cpu) and torch.equal(y_dev.cpu(), y_cpu)
    # mixup's float products may round differently: the same lambda and pairs, to float precision
    mixer = make(Augment(mixup_alpha=0.3), seed=3)
    mixed_cpu = mixer(x, y)
    mixer.set_epoch(0)
    mixed_dev = mixer(x.to(device), y.to(device))
    for cpu, dev in zip(mixed_cpu, mixed_dev):
        assert torch.allclose(dev.cpu(), cpu, rtol=0, atol=1e-6)


def test_inactive_augment_returns_the_batch_untouched():
    assert not Augment().active and Augment(mixup_alpha=0.1).active and Augment(time_masks=1).active
    assert not Augment(time_masks=2, time_mask_width=0.0).active
    x, y = batch((4, 8, 10))
    out, targets = make(Augment())(x, y)
    assert out is x and targets is y


def test_dtype_and_device_are_kept():
    x, y = batch((4, 8, 10))
    out, targets = make(EVERYTHING)(x.to(torch.float16), y)
    assert out.dtype == torch.float16 and out.shape == x.shape
    assert targets.dtype == torch.float32


# -- settings and errors --------------------------------------------------------------------


def test_from_dict_names_an_unknown_key_where_it_was_written_and_the_valid_keys():
    with pytest.raises(MuzarrError) as error:
        Augment.from_dict({"time_mask": 2}, where="model 'x'")
    message = str(error.value)
    assert "'time_mask'" in message and "model 'x'" in message
    assert "did you mean 'time_masks'" in message and "mixup_alpha" in message


@pytest.mark.parametrize(
    "data, match",
    [
        ({"time_masks": 2.5}, r"time_masks=2\.5 must be a non-negative integer"),
        ({"time_masks": True}, r"time_masks=True must be a non-negative integer"),
        ({"freq_masks": -1}, r"freq_masks=-1 must be a non-negative integer"),
        ({"gain_db": -3}, r"gain_db=-3 must be at least 0"),
        ({"time_mask_width": 1.5}, r"time_mask_width=1\.5 must be between 0 and 1"),
        ({"time_shift": -0.1}, r"time_shift=-0\.1 must be between 0 and 1"),
        ({"mixup_alpha": "0.2"}, r"mixup_alpha='0\.2' must be a finite number"),
        ({"mask_value": float("nan")}, r"mask_value=nan must be a finite number"),
    ],
)
def test_from_dict_rejects_wrong_types_and_ranges(data, match):
    with pytest.raises(MuzarrError, match=r"^model 'x': augment " + match):
        Augment.from_dict(data, where="model 'x'")


def test_to_dict_from_dict_round_trip_and_types():
    augment = Augment.from_dict({"time_masks": 2, "gain_db": 6, "mixup_alpha": 0.2}, where="test")
    assert isinstance(augment.gain_db, float) and isinstance(augment.time_masks, int)
    assert Augment.from_dict(augment.to_dict(), where="test") == augment


@pytest.mark.parametrize(
    "augment",
    [Augment(), PRESETS["specaugment"], EVERYTHING, Augment(time_mask_width=0.29, mask_value=-80.0, gain_db=1 / 3)],
)
def test_parse_augment_round_trips(augment):
    assert parse_augment(format_augment(augment)) == augment


def test_parse_augment_types_values_from_the_fields_and_knows_presets():
    augment = parse_augment("time_masks=2, freq_masks=2,gain_db=6,mixup_alpha=0.2")
    assert augment == Augment(time_masks=2, freq_masks=2, gain_db=6.0, mixup_alpha=0.2)
    assert type(augment.time_masks) is int and type(augment.gain_db) is float
    assert parse_augment("specaugment") == Augment(time_masks=2, time_mask_width=0.1, freq_masks=2, freq_mask_width=8)
    assert parse_augment("none") == Augment() and not parse_augment("none").active
    assert parse_augment("specaugment,mixup_alpha=0.2") == Augment(time_masks=2, freq_masks=2, mixup_alpha=0.2)


@pytest.mark.parametrize(
    "text, match",
    [
        ("time_mask=2", r"unknown augment key\(s\) 'time_mask' \(did you mean 'time_masks'\?\); valid keys: time_"),
        ("time_masks=2.5", r"time_masks='2\.5' must be an integer"),
        ("gain_db=loud", r"gain_db='loud' must be a number"),
        ("gain_db=-3", r"gain_db=-3\.0 must be at least 0"),
        ("time_masks=1,time_masks=2", r"time_masks is given twice"),
        ("spec", r"'spec' is not a preset \(none, specaugment\)"),
        ("", r"give key=value pairs"),
    ],
)
def test_parse_augment_rejects_unknown_keys_and_bad_values(text, match):
    with pytest.raises(MuzarrError, match=r"^--augment '.*': .*" + match):
        parse_augment(text)


def test_freq_masks_on_a_waveform_input_are_refused():
    with pytest.raises(MuzarrError, match=r"freq_masks=2: frequency masks need a 2-D log-mel input"):
        make(PRESETS["specaugment"], input_kind="waveform")


def test_tabular_inputs_take_only_mixup():
    with pytest.raises(MuzarrError, match=r"gain_db=6\.0, time_masks=2: tabular inputs take only mixup_alpha"):
        make(Augment(time_masks=2, gain_db=6, mixup_alpha=0.2), input_kind="tabular")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_kind": "spectrogram"}, r"input_kind='spectrogram' must be one of logmel, waveform, tabular"),
        ({"task": "regression"}, r"task='regression' must be one of multilabel, multiclass"),
        ({"n_classes": 0}, r"n_classes=0 must be a positive integer"),
        ({"seed": -1}, r"seed=-1 must be a non-negative integer"),
    ],
)
def test_augmenter_arguments_are_checked(kwargs, match):
    with pytest.raises(MuzarrError, match=match):
        make(Augment(time_masks=1), **kwargs)


def test_batches_of_the_wrong_form_are_refused():
    augmenter = make(Augment(time_masks=1))
    with pytest.raises(MuzarrError, match=r"x has shape \(4, 10\); a logmel batch is \(batch, n_mels, n_frames\)"):
        augmenter(torch.zeros(4, 10), torch.zeros(4, 4))
    with pytest.raises(MuzarrError, match=r"multilabel targets have shape \(4, 3\); expected \(4, 4\)"):
        augmenter(torch.zeros(4, 8, 10), torch.zeros(4, 3))
    with pytest.raises(MuzarrError, match=r"x has dtype torch.int64"):
        augmenter(torch.zeros(4, 8, 10, dtype=torch.long), torch.zeros(4, 4))
    multiclass = make(Augment(time_masks=1), task="multiclass")
    with pytest.raises(MuzarrError, match=r"expected int64 class indices of shape \(4,\)"):
        multiclass(torch.zeros(4, 8, 10), torch.zeros(4, 4))
    with pytest.raises(MuzarrError, match=r"set_epoch\(-1\)"):
        augmenter.set_epoch(-1)

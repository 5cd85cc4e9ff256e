"""One checker for settings given as data (issue #22 item 4): a catalog's ``train:`` settings, a paper
row's, a sweep file's values and a feature's parameters are checked alike, and say the same thing
about the same mistake: where, the key, the value and the type expected."""

from __future__ import annotations

import pytest
import yaml

from pipeline import MuzarrError
from pipeline.typed import coerce, expected_type, typed_fields
from training.experiments.papers import load_paper
from training.experiments.sweep import parse_sweep
from training.run.protocol import Plateau, protocol_overrides


def _paper_row_error(tmp_path, train: dict) -> str:
    row = {"label": "MLP", "model": "mlp", "published": {"roc_auc": 0.8}, "train": train}
    paper = {"name": "mine", "title": "t", "citation": "c", "dataset": "demo", "metrics": ["roc_auc"], "gpu_hours": 1,
             "gpu_hours_basis": "estimate", "rows": [row]}  # fmt: skip
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(paper))
    with pytest.raises(MuzarrError) as error:
        load_paper(path)
    return str(error.value)


def _sweep_error(parameters: dict) -> str:
    with pytest.raises(MuzarrError) as error:
        parse_sweep({"parameters": parameters}, model="mlp", where="sweep.yaml")
    return str(error.value)


def _catalog_error(train: dict) -> str:
    with pytest.raises(MuzarrError) as error:
        protocol_overrides(train, where="catalog dataset 'demo': train")
    return str(error.value)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("weight_decay", float("inf"), "weight_decay=inf must be a finite number"),  # passed the catalog and papers before
        ("lr", float("nan"), "lr=nan must be a finite number"),
        ("epochs", "many", "epochs='many' must be an integer"),
        ("batch_size", 2.5, "batch_size=2.5 must be an integer"),
    ],
)
def test_the_same_mistake_reads_the_same_from_a_catalog_a_paper_and_a_sweep_file(tmp_path, key, value, expected):
    assert _catalog_error({key: value}) == f"catalog dataset 'demo': train: {expected}"
    # a paper row's settings may also be null (the model's protocol decides)
    assert f"row 1 (MLP): train: {expected}" in _paper_row_error(tmp_path, {key: value})
    # a sweep file says which entry of the parameter: value, values, min, max
    assert _sweep_error({key: {"value": value}}) == f"sweep.yaml: parameter {key!r}: value{expected.removeprefix(key)}"


def test_whole_numbers_and_strings_read_alike_at_every_door(tmp_path):
    """YAML gives ``1e3`` as a string and ``32.0`` as a float: an integer setting takes both, as sweeps always did."""
    assert protocol_overrides({"epochs": "1e3", "batch_size": 32.0, "nesterov": "yes"}, where="w") == {
        "epochs": 1000, "batch_size": 32, "nesterov": True}  # fmt: skip
    spec = parse_sweep({"parameters": {"epochs": {"value": "1e3"}, "nesterov": {"values": ["yes", False]}}}, model="mlp")
    assert [(p.value, p.values) for p in spec.parameters] == [(1000, None), (None, (True, False))]


def test_a_misspelt_key_names_the_closest_valid_one():
    with pytest.raises(MuzarrError, match=r"^w: unknown key\(s\) \['factr'\] \(did you mean 'factor'\?\); valid keys: factor, patience$"):
        typed_fields(Plateau, {"factr": 0.5}, where="w")


def test_mappings_and_lists_are_checked_not_passed_through(tmp_path):
    assert _paper_row_error(tmp_path, {"scheduler_opts": 3}).endswith("train: scheduler_opts=3 must be a mapping")
    with pytest.raises(MuzarrError, match=r"^w=\[8, 'x'\] must be a list of integers$"):
        coerce(tuple[int, ...], [8, "x"], where="w")


def test_feature_parameters_keep_their_strict_json_types():
    """A store's parameters are JSON: no string is read as a number there, and a float default is a number only."""
    assert expected_type("64", 64) == "an integer" and expected_type(64.0, 64) == "an integer"
    assert expected_type(None, 20.0) == "a number" and expected_type(None, None) is None
    assert expected_type([64, "x"], (64, 128)) == "a list of integers" and expected_type([64], (64, 128)) is None

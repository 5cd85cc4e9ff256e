"""From a store split to batches: what a model reads (:mod:`~training.data.spec`), its examples
(:mod:`~training.data.plan`), the split read by block, crop or cache (:mod:`~training.data.reader`), shuffled
training batches (:mod:`~training.data.stream`), normalisation statistics and batch augmentation."""

from training.data.plan import ExamplePlan, crop_offsets, plan_examples, plan_for, resolve_array
from training.data.reader import (
    SplitReader,
    crop,
    eval_batches,
    eval_offsets,
    gather_tensor,
    to_float,
    to_tensor,
    useful_workers,
)
from training.data.spec import TABULAR_SIZES, InputSpec
from training.data.stream import TrainStream

__all__ = [
    "TABULAR_SIZES",
    "ExamplePlan",
    "InputSpec",
    "SplitReader",
    "TrainStream",
    "crop",
    "crop_offsets",
    "eval_batches",
    "eval_offsets",
    "gather_tensor",
    "plan_examples",
    "plan_for",
    "resolve_array",
    "to_float",
    "to_tensor",
    "useful_workers",
]

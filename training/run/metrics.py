"""Metrics by task: multilabel (ROC-AUC, PR-AUC, per tag) and multiclass (accuracy, F1, confusion)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, confusion_matrix, f1_score, roc_auc_score


def multilabel_metrics(targets: np.ndarray, scores: np.ndarray, classes: list[str]) -> dict:
    """Macro ROC-AUC and PR-AUC (sklearn, ``average="macro"``) and ROC-AUC per tag.

    A tag with only positives or only negatives in ``targets`` has no AUC: it is left out of
    the macro averages (sklearn would raise) and reported as ``None`` with the count skipped.
    """
    roc, pr = {}, {}
    for j, tag in enumerate(classes):
        column = targets[:, j]
        if 0 < column.sum() < len(column):
            roc[tag] = float(roc_auc_score(column, scores[:, j]))
            pr[tag] = float(average_precision_score(column, scores[:, j]))
        else:
            roc[tag] = pr[tag] = None
    valid = [tag for tag in classes if roc[tag] is not None]
    return {
        "roc_auc": float(np.mean([roc[t] for t in valid])) if valid else float("nan"),
        "pr_auc": float(np.mean([pr[t] for t in valid])) if valid else float("nan"),
        "per_tag_roc_auc": roc,
        "per_tag_pr_auc": pr,
        "tags_without_auc": len(classes) - len(valid),
    }


def multiclass_metrics(targets: np.ndarray, scores: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, F1 macro and weighted, and the confusion matrix (rows: true, columns: predicted).

    F1 averages over the classes present in ``targets``: a class the store declares but has no
    clip of (a 3-genre GTZAN store of 10 declared genres) would otherwise count as F1 = 0 and
    cut F1-macro to 3/10 of its value. ``classes_without_clips`` counts the ones left out.
    The confusion matrix keeps every declared class.
    """
    predicted = scores.argmax(axis=1)
    present = np.unique(targets).tolist()
    return {
        "accuracy": float(accuracy_score(targets, predicted)),
        "f1_macro": float(f1_score(targets, predicted, average="macro", labels=present, zero_division=0)),
        "f1_weighted": float(f1_score(targets, predicted, average="weighted", labels=present, zero_division=0)),
        "classes_without_clips": len(classes) - len(present),
        "confusion_matrix": confusion_matrix(targets, predicted, labels=list(range(len(classes)))).tolist(),
    }


def compute_metrics(task: str, targets: np.ndarray, scores: np.ndarray, classes: list[str]) -> dict:
    if task == "multilabel":
        return multilabel_metrics(targets, scores, classes)
    return multiclass_metrics(targets, scores, classes)


#: the metric a task's best epoch is chosen by (higher is better)
PRIMARY = {"multilabel": "roc_auc", "multiclass": "accuracy"}
#: scalar metrics worth a column in history.csv
SCALARS = {"multilabel": ("roc_auc", "pr_auc"), "multiclass": ("accuracy", "f1_macro", "f1_weighted")}

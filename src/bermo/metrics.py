"""GLUE's metrics, computed with scikit-learn and scipy (`evaluate`'s GLUE metric downloads code from the Hub)."""

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def classification_metrics(predictions, labels, metric="accuracy", num_labels=2):
    """accuracy always; F1 (binary) for MRPC/QQP-style tasks; Matthews correlation for CoLA."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    results = {"accuracy": float(accuracy_score(labels, predictions))}
    if metric == "f1" and num_labels == 2:
        results["f1"] = float(f1_score(labels, predictions))
    if metric == "matthews_correlation":
        results["matthews_correlation"] = float(matthews_corrcoef(labels, predictions))
    return results


def regression_metrics(predictions, labels):
    """Pearson and Spearman correlation (STS-B); their mean as `combined_score`, as GLUE reports."""
    predictions, labels = np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float)
    pearson = float(pearsonr(predictions, labels)[0]) if np.std(predictions) > 0 else 0.0
    spearman = float(spearmanr(predictions, labels)[0]) if np.std(predictions) > 0 else 0.0
    return {"pearson": pearson, "spearmanr": spearman, "combined_score": (pearson + spearman) / 2}


def task_metrics(predictions, labels, metric, num_labels):
    if num_labels == 1:
        return regression_metrics(predictions, labels)
    return classification_metrics(predictions, labels, metric, num_labels)

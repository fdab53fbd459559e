"""Classification report: accuracy, macro and per-class precision/recall/F1, support and confusion matrix.

The project's own `evaluate` metric so evaluation works offline: `evaluate.load("accuracy")` and friends fetch
their scripts from the Hub even when cached, while `evaluate.load("<path to this folder>")` never does.
Computed with numpy (what scikit-learn's `classification_report` and `confusion_matrix` do, without the
dependency). `evaluate` copies this file into its modules cache and parses its import lines: keep one
module per import line, and only numpy/datasets/evaluate (never hf_animals, which is not importable there).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Single-label multi-class classification report. Labels are integer class indices 0..num_classes-1.
Per class: precision = TP / predicted, recall = TP / support, F1 = 2TP / (predicted + support), where a 0/0
ratio is `zero_division` (default 0.0, like scikit-learn's zero_division=0 but without warnings).
Macro averages are unweighted means over the classes present in `references` or `predictions` (scikit-learn's
default label set): a class absent from both is still reported per class (support 0) but does not drag the
averages down. The confusion matrix has rows = true class, columns = predicted class.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class indices.
    references (`list` of `int`): true class indices.
    num_classes (`int`, optional): size of the label space; defaults to 1 + the largest index seen. Pass it so
        the per-class lists and the confusion matrix always have one entry per class.
    zero_division (`float`, optional): value of a 0/0 precision, recall or F1. Defaults to 0.0.
Returns:
    accuracy, precision_macro, recall_macro, f1_macro (`float`);
    precision, recall, f1 (`list` of `float`), support (`list` of `int`), one entry per class;
    confusion_matrix (`list` of `list` of `int`), rows = true class, columns = predicted class.
Examples:
    >>> report = evaluate.load("hf_animals/metric_modules/classification_report")
    >>> report.compute(predictions=[0, 1, 1], references=[0, 1, 0], num_classes=2)["accuracy"]
    0.6666666666666666
"""

_CITATION = ""


def _safe_ratio(numerator, denominator, zero_division):
    """numerator / denominator elementwise, `zero_division` where the denominator is 0 (no NaN, no warning)."""
    out = np.full(numerator.shape, float(zero_division), dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClassificationReport(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            format="numpy",
        )

    def _compute(self, predictions, references, num_classes=None, zero_division=0.0):
        predictions = np.asarray(predictions, dtype=np.int64).ravel()
        references = np.asarray(references, dtype=np.int64).ravel()
        if predictions.size == 0:
            raise ValueError("classification_report needs at least one prediction")
        seen_max = int(max(predictions.max(), references.max()))
        if num_classes is None:
            num_classes = seen_max + 1
        if int(min(predictions.min(), references.min())) < 0 or seen_max >= num_classes:
            raise ValueError(f"class indices must lie in [0, {num_classes}); got values in "
                             f"[{int(min(predictions.min(), references.min()))}, {seen_max}]")

        # Confusion matrix in one bincount: each (true, predicted) pair maps to the flat index true*K + predicted.
        confusion = np.bincount(references * num_classes + predictions,
                                minlength=num_classes * num_classes).reshape(num_classes, num_classes)
        true_positives = np.diag(confusion)
        support = confusion.sum(axis=1)
        predicted = confusion.sum(axis=0)

        precision = _safe_ratio(true_positives, predicted, zero_division)
        recall = _safe_ratio(true_positives, support, zero_division)
        f1 = _safe_ratio(2 * true_positives, predicted + support, zero_division)
        present = (support + predicted) > 0

        return {
            "accuracy": float(true_positives.sum() / predictions.size),
            "precision_macro": float(precision[present].mean()),
            "recall_macro": float(recall[present].mean()),
            "f1_macro": float(f1[present].mean()),
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "support": support.tolist(),
            "confusion_matrix": confusion.tolist(),
        }

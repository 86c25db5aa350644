"""Accuracy as an ``evaluate`` module, shipped with equirecon and loaded by path (works offline)."""

import datasets
import evaluate

from equirecon.evaluation.metrics import accuracy

_DESCRIPTION = """
Accuracy is the proportion of correct predictions among all predictions:
Accuracy = (TP + TN) / (TP + TN + FP + FN). Same inputs and output as the `accuracy` module of the
`evaluate` library, computed by `equirecon.evaluation.metrics.accuracy`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): ground-truth labels.
    normalize (`bool`, defaults to `True`): if `False`, return the number of correct predictions instead.
    sample_weight (`list` of `float`, optional): per-sample weights.
Returns:
    accuracy (`float`): in [0, 1] (or a count if `normalize=False`).
Examples:
    >>> metric = evaluate.load(equirecon.evaluation.metric_modules.metric_path("accuracy"))
    >>> metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2])
    {'accuracy': 0.75}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        return {"accuracy": accuracy(predictions, references, normalize=normalize, sample_weight=sample_weight)}

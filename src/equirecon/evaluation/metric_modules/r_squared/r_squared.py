"""Coefficient of determination R² as an ``evaluate`` module, shipped with equirecon and loaded by path.

Accepts one output per sample (floats) or several (lists of floats). For several outputs, ``multioutput``
chooses the convention: ``"global"`` (one mean over all outputs, as SIE and the EquiRecon paper report) or
``"per_output"`` (the mean of the per-output R², as scikit-learn's default).
"""

import datasets
import evaluate

from equirecon.evaluation.metrics import r2_score

_DESCRIPTION = """
R² = 1 - RSS / TSS: the fraction of the variance of the references that the predictions explain. 1 is perfect,
0 is what predicting the mean achieves, negative values are worse than that. Computed by
`equirecon.evaluation.metrics.r2_score`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `float`, or `list` of `list` of `float`): predicted values, one or P per sample.
    references: ground-truth values, same shape as `predictions`.
    multioutput (`str`, defaults to `"global"`): `"global"` (one mean over all outputs, SIE's convention),
        `"per_output"` (mean of per-output R²) or `"raw_values"` (a list with the R² of each output).
Returns:
    r_squared (`float`, or `list` of `float` for `"raw_values"`).
Examples:
    >>> metric = evaluate.load(equirecon.evaluation.metric_modules.metric_path("r_squared"))
    >>> metric.compute(predictions=[1.0, 2.0, 3.0], references=[1.0, 2.0, 3.0])
    {'r_squared': 1.0}
"""

_CITATION = """
@inproceedings{garrido2023sie,
  title={Self-supervised learning of Split Invariant Equivariant representations},
  author={Garrido, Quentin and Najman, Laurent and LeCun, Yann},
  booktitle={ICML},
  year={2023}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RSquared(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}),
                datasets.Features(
                    {
                        "predictions": datasets.List(datasets.Value("float64")),
                        "references": datasets.List(datasets.Value("float64")),
                    }
                ),
            ],
        )

    def _compute(self, predictions, references, multioutput="global"):
        value = r2_score(y_true=references, y_pred=predictions, multioutput=multioutput)
        return {"r_squared": value.tolist() if hasattr(value, "tolist") else value}

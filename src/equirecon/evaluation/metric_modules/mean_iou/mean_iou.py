"""Mean intersection-over-union as an ``evaluate`` module, shipped with equirecon and loaded by path.

Same arguments and output keys as the ``mean_iou`` module of the ``evaluate`` library; computed from a confusion
matrix by ``equirecon.evaluation.segmentation_metrics.mean_iou``. For evaluation loops that should not hold every
label map in memory, use ``equirecon.evaluation.segmentation_metrics.ConfusionMatrix`` (streaming, on the device)
instead.
"""

import datasets
import evaluate
import numpy as np

from equirecon.evaluation.segmentation_metrics import mean_iou

_DESCRIPTION = """
IoU is the area of overlap between the predicted segmentation and the ground truth divided by the area of union
between them. For each class IoU = TP / (TP + FP + FN); the mean IoU averages it over the classes present.
Pixels whose reference is `ignore_index` are excluded. Classes absent from both the references and the
predictions get NaN and are left out of the means.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`List[ndarray]`): predicted segmentation maps, each of shape (height, width).
    references (`List[ndarray]`): ground-truth segmentation maps, each of shape (height, width).
    num_labels (`int`): number of classes.
    ignore_index (`int`, defaults to 255): reference value to ignore.
    nan_to_num (`float`, optional): value that replaces NaN in the results.
    label_map (`dict`, optional): old label id -> new label id, applied to the references.
    reduce_labels (`bool`, defaults to `False`): map reference 0 (background) to `ignore_index` and k to k - 1.
Returns:
    `mean_iou`, `mean_accuracy`, `overall_accuracy` (`float`) and `per_category_iou`,
    `per_category_accuracy` (`ndarray` of shape (num_labels,)).
Examples:
    >>> metric = evaluate.load(equirecon.evaluation.metric_modules.metric_path("mean_iou"))
    >>> metric.compute(predictions=[np.array([[0, 1], [1, 1]])], references=[np.array([[0, 1], [0, 255]])],
    ...                num_labels=2, ignore_index=255)["mean_iou"]
    0.5
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.List(datasets.List(datasets.Value("uint16"))),
                    "references": datasets.List(datasets.List(datasets.Value("uint16"))),
                }
            ),
        )

    def _compute(
        self,
        predictions,
        references,
        num_labels,
        ignore_index=255,
        nan_to_num=None,
        label_map=None,
        reduce_labels=False,
    ):
        return mean_iou(
            [np.asarray(p) for p in predictions],
            [np.asarray(r) for r in references],
            num_labels=num_labels,
            ignore_index=ignore_index,
            nan_to_num=nan_to_num,
            label_map=label_map,
            reduce_labels=reduce_labels,
        )

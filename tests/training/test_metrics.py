import math

import numpy as np
import pytest
import torch

from sweeper.training.metrics import (Phase1Meter, class_iou, confusion_matrix, mean_iou, phase1_dice, phase1_iou,
                                      pixel_accuracy)

PRED = torch.tensor([[0, 0], [1, 1]])
TARGET = torch.tensor([[0, 1], [1, 1]])


def test_confusion_matrix_counts_target_rows_pred_columns():
    cm = confusion_matrix(PRED, TARGET, 3).numpy()
    assert cm.tolist() == [[1, 0, 0], [1, 2, 0], [0, 0, 0]]


def test_phase1_scores_on_a_hand_made_mask():
    cm = confusion_matrix(PRED, TARGET, 3).numpy()
    # class 0: I=1 U=2; class 1: I=2 U=3; class 2 absent -> NaN, left out of the mean
    assert phase1_iou(cm) == pytest.approx((1 / 2 + 2 / 3) / 2)
    # Dice: (2+s)/(3+s), (4+s)/(5+s), absent class (0+s)/(0+s) = 1 counts in the plain mean
    assert phase1_dice(cm) == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)
    assert pixel_accuracy(cm) == 0.75
    iou = class_iou(cm)
    assert iou[0] == 0.5 and iou[1] == pytest.approx(2 / 3) and math.isnan(iou[2])


def test_perfect_prediction_scores_one_and_all_absent_is_nan():
    cm = confusion_matrix(TARGET, TARGET, 4).numpy()
    assert phase1_iou(cm) == 1.0 and phase1_dice(cm) == pytest.approx(1.0) and pixel_accuracy(cm) == 1.0
    assert math.isnan(phase1_iou(np.zeros((3, 3))))


def test_labels_outside_the_table_never_count_as_a_match():
    cm = confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 7]), 3).numpy()
    assert cm.sum() == 1 and cm[0, 0] == 1


def test_per_batch_mean_differs_from_dataset_miou():
    # Batch 1 is perfect on class 0; batch 2 gets class 1 half right. The phase-1 metric
    # averages the batch scores; the dataset mIoU pools the pixels first.
    meter = Phase1Meter(2)
    meter.add(confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 0]), 2))
    meter.add(confusion_matrix(torch.tensor([1, 0]), torch.tensor([1, 1]), 2))
    s = meter.summary("val")
    assert s["val_iou"] == pytest.approx((1.0 + (0 + 0.5) / 2) / 2)  # batch 2: class 0 I=0 U=1, class 1 I=1 U=2
    # pooled: class 0 I=2 U=3, class 1 I=1 U=2
    assert s["val_miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert s["val_class_iou"] == pytest.approx([2 / 3, 1 / 2])
    assert s["val_acc"] == pytest.approx((1.0 + 0.5) / 2)
    assert mean_iou(meter.cm) == s["val_miou"]


@pytest.mark.parametrize("values, mode, expected", [
    ([0.2, math.nan, 0.5, 0.4], "max", 2),   # a NaN epoch in the middle is skipped
    ([math.nan, 0.3, 0.1], "max", 1),        # a NaN first must not win (max() keeps a leading NaN)
    ([0.3, 0.3, 0.1], "max", 0),             # ties: the earliest epoch
    ([0.2, None, 0.1, math.nan], "min", 2),  # None (a missing value) counts as NaN
    ([math.nan, None], "max", None),         # nothing to rank: no best epoch
    ([], "max", None),
])
def test_best_index_skips_nan_and_prefers_the_earliest_tie(values, mode, expected):
    from sweeper.training.objective import best_index

    assert best_index(values, mode=mode) == expected


def test_phase1_class_iou_averages_each_class_over_the_batches_it_appears_in():
    # Two batches of one 2x2 image, 4 classes; worked out by hand:
    # batch A  target [[0,0],[1,1]]  pred [[0,1],[1,1]]: class 0 I/U = 1/2, class 1 = 2/3, classes 2, 3 absent
    # batch B  target [[1,1],[2,2]]  pred [[1,1],[2,0]]: class 0 predicted, not present = 0/1, class 1 = 2/2,
    #                                                    class 2 = 1/2, class 3 absent
    from sweeper.training.metrics import phase1_class_iou

    a = confusion_matrix(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 0], [1, 1]]), 4).numpy()
    b = confusion_matrix(torch.tensor([[1, 1], [2, 0]]), torch.tensor([[1, 1], [2, 2]]), 4).numpy()
    per_batch = phase1_class_iou([a, b])
    # a class absent from a batch (empty union, as phase1_iou decides) is skipped there; absent everywhere: NaN
    assert per_batch[:3] == pytest.approx([(0.5 + 0.0) / 2, (2 / 3 + 1.0) / 2, 0.5])
    assert math.isnan(per_batch[3])
    # the dataset-level figures from the summed matrix differ: class 0 I=1 U=3, class 1 I=4 U=5, class 2 I=1 U=2
    assert class_iou(a + b)[:3] == pytest.approx([1 / 3, 4 / 5, 1 / 2])


def test_phase1_class_iou_of_no_batches_is_all_nan():
    from sweeper.training.metrics import phase1_class_iou

    assert np.isnan(phase1_class_iou([], num_classes=3)).all() and len(phase1_class_iou([], num_classes=3)) == 3

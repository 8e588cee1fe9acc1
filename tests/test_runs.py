"""Run-folder files written in phase 1's layout, checked byte for byte."""

from __future__ import annotations

from sweeper.runs import evaluation_metrics_text

TWO_EPOCHS = [
    {"epoch": 1, "train_loss": 1.25, "val_loss": 1.5, "train_iou": 0.2, "val_iou": 0.25, "train_dice": 0.3,
     "val_dice": 0.35, "train_acc": 0.6, "val_acc": 0.65},
    {"epoch": 2, "train_loss": 0.75, "val_loss": 1.0, "train_iou": 0.4, "val_iou": 0.3, "train_dice": 0.5,
     "val_dice": 0.45, "train_acc": 0.7, "val_acc": 0.62},
]

# Written out by hand from the organisers' format: every table column, the last one included, is padded to its
# width ('{:<8}' for the epoch, '{:<12}' for the rest, one space between), so the rows end in spaces.
EXPECTED = (
    "TRAINING RESULTS\n"
    "==================================================\n"
    "\n"
    "Final Metrics:\n"
    "  Final Train Loss:     0.7500\n"
    "  Final Val Loss:       1.0000\n"
    "  Final Train IoU:      0.4000\n"
    "  Final Val IoU:        0.3000\n"
    "  Final Train Dice:     0.5000\n"
    "  Final Val Dice:       0.4500\n"
    "  Final Train Accuracy: 0.7000\n"
    "  Final Val Accuracy:   0.6200\n"
    "==================================================\n"
    "\n"
    "Best Results:\n"
    "  Best Val IoU:      0.3000 (Epoch 2)\n"
    "  Best Val Dice:     0.4500 (Epoch 2)\n"
    "  Best Val Accuracy: 0.6500 (Epoch 1)\n"
    "  Lowest Val Loss:   1.0000 (Epoch 2)\n"
    "==================================================\n"
    "\n"
    "Per-Epoch History:\n"
    "----------------------------------------------------------------------------------------------------\n"
    "Epoch    Train Loss   Val Loss     Train IoU    Val IoU      Train Dice   Val Dice     Train Acc    Val Acc     \n"
    "----------------------------------------------------------------------------------------------------\n"
    "1        1.2500       1.5000       0.2000       0.2500       0.3000       0.3500       0.6000       0.6500      \n"
    "2        0.7500       1.0000       0.4000       0.3000       0.5000       0.4500       0.7000       0.6200      \n"
)


def test_evaluation_metrics_text_is_the_organisers_bytes():
    assert evaluation_metrics_text(TWO_EPOCHS) == EXPECTED


def test_every_table_row_is_the_full_width():
    rows = EXPECTED.split("Per-Epoch History:\n")[1].splitlines()
    assert len("-" * 100) == len(rows[0]) and len(rows[1]) == 8 + 8 * 13  # the expected text itself is right
    table = evaluation_metrics_text(TWO_EPOCHS).split("Per-Epoch History:\n")[1].splitlines()
    assert [len(r) for r in table] == [100, 112, 100, 112, 112]

"""Classification report from a confusion matrix."""

import torch

from hvdl.metrics import confusion_matrix, report


def test_report_matches_hand_counts():
    """Test that accuracy, precision, recall and F1 follow from the confusion counts."""
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0, 0])
    conf = confusion_matrix(labels, predicted, 3)
    assert conf.tolist() == [[1, 1, 0], [1, 2, 0], [1, 0, 0]]
    r = report(conf, cost_sum=3.0, count=6)
    assert r["accuracy"] == 0.5 and r["cost"] == 0.5
    assert r["precision"] == [1 / 3, 2 / 3, 0.0]
    assert r["recall"] == [0.5, 2 / 3, 0.0]
    assert abs(r["f1"][0] - 0.4) < 1e-12 and r["f1"][2] == 0.0

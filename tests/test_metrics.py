import numpy as np
import pytest
import torch

from ftsweep.metrics import (PeakMemory, classification_report, classification_scores, confusion_matrix,
                             step_time_stats)


def test_scores_match_a_hand_computation():
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 1, 1, 2, 2])
    cm = confusion_matrix(labels, preds, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # per class F1: 2*1*(2/3)/(5/3)=0.8, 2*.5*.5/1=0.5, 2*.5*1/1.5=2/3
    s = classification_scores(cm)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["f1_macro"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    report = classification_report(cm, ["a", "b", "c"])
    assert report["a"]["support"] == 3 and report["b"]["precision"] == pytest.approx(0.5)


def test_a_class_never_predicted_scores_zero_not_nan():
    cm = confusion_matrix(np.array([0, 1]), np.array([0, 0]), 2)
    assert classification_scores(cm)["f1_macro"] == pytest.approx((2 / 3 + 0) / 2)


def test_step_time_stats_skip_warmup():
    times = [1.0, 1.0, 1.0] + [0.010] * 9 + [0.020]
    stats = step_time_stats(times)
    assert stats["perf/step_time_ms"] == pytest.approx(10.0)
    assert 10.0 <= stats["perf/step_time_p90_ms"] <= 20.0


def test_peak_memory_is_per_run_even_in_one_process():
    """A big run followed by a small one must report a smaller peak for the small one."""
    def run(mb: int) -> float:
        meter = PeakMemory(torch.device("cpu")).start()
        block = torch.ones(mb * 2**20 // 4)  # touched, so it is resident
        block += 1
        del block
        return meter.stop()["mem/cpu_peak_rss_mb"]

    big = run(600)
    small = run(50)
    assert big > small + 400, (big, small)

"""annoboot.viz.curves: curves and agreement from metrics.jsonl, and unreadable metrics."""

import json

import pytest
from matplotlib.image import imread

from annoboot.errors import AnnobootError
from annoboot.viz import agreement_series, plot_agreement, plot_curves, read_metrics


def assert_png(path):
    assert path.is_file() and path.stat().st_size > 0
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50


def test_curves_and_agreement_from_a_hand_written_metrics_file(tmp_path):
    lines = []
    for step in (10, 20, 30):
        record = {"step": step, "loss/total": 9.0 - step / 10, "loss/simclr": 5.0, "loss/bootstrap": 4.0 - step / 10,
                  "schedule/lr": 1e-3 * step / 30, "ab/target_entropy": 2.0}
        record.update({f"ab_agreement/iou_{b}": step / 100 for b in ("0", "0-0.2", "0.2-0.5", "0.5-0.8", "0.8-1")})
        lines.append(json.dumps(record))
    # A step logged before the reduction, as raw sums, and a torn last line from a killed run.
    lines.append(json.dumps({"step": 40, "ab_agreement/iou_0#numerator": 3.0, "ab_agreement/iou_0#denominator": 4.0}))
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(lines) + '\n{"step": 50, "loss/to')
    records = read_metrics(path)
    assert [r["step"] for r in records] == [10, 20, 30, 40]

    assert_png(plot_curves(records, tmp_path / "curves.png"))
    assert_png(plot_agreement(records, tmp_path / "agreement.png"))
    buckets = agreement_series(records)
    assert list(buckets) == ["0", "0-0.2", "0.2-0.5", "0.5-0.8", "0.8-1"]
    assert buckets["0"] == ([10.0, 20.0, 30.0, 40.0], [0.1, 0.2, 0.3, 0.75])
    assert plot_agreement([{"step": 1, "loss/total": 1.0}], tmp_path / "none.png") is None


def test_unreadable_metrics_name_the_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with pytest.raises(AnnobootError, match="no metrics file"):
        read_metrics(path)
    path.write_text('{"step": 1, "loss/total": 1.0}\nnot json\n{"step": 2, "loss/total": 1.0}\n')
    with pytest.raises(AnnobootError, match=r"metrics.jsonl, line 2"):
        read_metrics(path)
    path.write_text("")
    with pytest.raises(AnnobootError, match="no logged steps"):
        read_metrics(path)

"""annoboot compare: three tiny runs side by side (every probe, only the options that differ),
wall time and views seen that add up over a resume, and the one table printer's layouts."""

import csv
import io
import json

import pytest
from helpers import TINY, needs_fmnist, one_thread  # noqa: F401 (one_thread: an autouse fixture)
from hypothesis import given, settings
from hypothesis import strategies as st

from annoboot import commands
from annoboot.cli import main
from annoboot.compare import compare_runs, format_comparison, probe_figures
from annoboot.recipe import load_config
from annoboot.tables import format_table
from annoboot.train import Trainer

PROBED = ["eval.at_end=true", "eval.train.limit=300", "eval.test.limit=100", "eval.linear_epochs=1",
          "eval.probes=[knn,linear]", "data.annotation.limit=500", "train.batch_size=16"]


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    """Two probed SimCLR runs that differ in lr and temperature, one unprobed AB run."""
    root = tmp_path_factory.mktemp("compare")
    runs = {
        "lr_low": ["method.name=simclr", "train.lr=0.001", *PROBED],
        "lr_high": ["method.name=simclr", "train.lr=0.003", "method.temperature=0.2", *PROBED],
        "ab": ["method.name=ab_simclr", "train.batch_size=16", "data.annotation.limit=500"],
    }
    for name, overrides in runs.items():
        commands.pretrain(load_config(None, TINY + ["train.steps=3", "train.log_every=1", f"train.out_dir={root / name}",
                                                    *overrides]))
    return root


@needs_fmnist
def test_compare_prints_every_probe_and_only_the_options_that_differ(three_runs, capsys):
    runs = [str(three_runs / name) for name in ("lr_low", "lr_high", "ab")]
    comparison = compare_runs(runs)
    assert comparison["figures"] == ["knn", "linear"]
    differing = set(comparison["differing"])
    assert {"train.lr", "method.temperature"} <= differing
    # Options all three share, and where they were written, are not listed.
    assert not differing & {"train.steps", "model.backbone", "train.out_dir", "views.img_size"}
    by_run = {s["run"]: s for s in comparison["runs"]}
    low = by_run[runs[0]]
    saved = json.loads((three_runs / "lr_low" / "eval.json").read_text())
    assert low["figures"] == {"knn": saved["knn"], "linear": saved["linear"]}
    assert low["steps"] == 3 and low["views_seen"] == 3 * 16 * 2  # SimCLR: 2 views of each of 16 images
    assert low["train_seconds"] > 0 and low["method"] == "simclr"
    assert by_run[runs[2]]["method"] == "ab_simclr" and not by_run[runs[2]]["evaluated"]

    assert main(["compare", *runs, "--format", "csv"]) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    header = table[0]
    assert header[:6] == ["run", "method", "data", "steps", "views", "min"] and "train.lr" in header
    rows = {row[0]: dict(zip(header, row)) for row in table[1:]}
    assert rows[runs[0]]["train.lr"] == "0.001" and rows[runs[1]]["method.temperature"] == "0.2"
    assert float(rows[runs[1]]["knn"]) == pytest.approx(by_run[runs[1]]["figures"]["knn"], abs=0.01)
    assert rows[runs[2]]["knn"] == "-"

    assert main(["compare", *runs]) == 0
    text = capsys.readouterr().out
    assert f"{runs[2]}: no eval.json" in text  # an unprobed run says so

    assert main(["compare", *runs, "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["runs"][1]["options"]["method.temperature"] == 0.2


@needs_fmnist
def test_wall_time_and_views_seen_add_up_over_a_resume(tmp_path):
    run = tmp_path / "run"
    base = TINY + ["method.name=simclr", "train.batch_size=16", "data.annotation.limit=500", "train.log_every=1",
                   "train.ckpt_every=2", f"train.out_dir={run}"]
    Trainer(load_config(None, base + ["train.steps=2"])).fit()
    first = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    Trainer(load_config(None, base + ["train.steps=4"]), resume=True).fit()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["progress/views_seen"] for r in rows] == [32.0, 64.0, 96.0, 128.0]
    seconds = [r["time/train_seconds"] for r in rows]
    assert seconds[:2] == [r["time/train_seconds"] for r in first]  # the first process's rows kept as they were
    assert all(b > a for a, b in zip(seconds, seconds[1:]))  # the resumed process counts on from them


def test_a_folder_that_is_not_a_run_is_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty")]) == 2
    assert f"{tmp_path / 'empty'}: not a run folder" in capsys.readouterr().err
    run = tmp_path / "damaged"
    run.mkdir()
    (run / "config.yaml").write_text("method: {name: simclr}\n")
    (run / "eval.json").write_text('{"knn": 5')  # cut short
    assert main(["compare", str(run)]) == 2
    err = capsys.readouterr().err
    assert str(run / "eval.json") in err and "not a readable JSON file" in err and "Traceback" not in err


def test_probe_figures_name_scene_families_and_leave_out_settings():
    results = {"knn": 71.0, "linear": 80.5, "details": {"knn": {"k": 20}}, "num_train": 500, "seconds": 3.0,
               "zero_shot": 40.0, "zero_shot_chance": 10.0,
               "retrieval": {"image_to_text_r1": 12.0, "num_pairs": 100, "chance_r1": 1.0},
               "scene_probes": {"in_context": {"knn": 30.0, "context": {"resolution": 128}, "num_test": 9}}}
    assert probe_figures(results) == {"knn": 71.0, "linear": 80.5, "zero_shot": 40.0,
                                      "retrieval.image_to_text_r1": 12.0, "in_context/knn": 30.0}


cells = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=8)


@settings(max_examples=60, deadline=None)
@given(header=st.lists(cells, min_size=1, max_size=5), data=st.data())
def test_every_layout_keeps_every_cell(header, data):
    rows = data.draw(st.lists(st.lists(cells, min_size=len(header), max_size=len(header)), max_size=4))
    parsed = list(csv.reader(io.StringIO(format_table(header, rows, "csv"))))
    assert parsed == [header, *rows] or (not any(header) and not rows)  # csv: a lone empty row reads as []
    md = format_table(header, rows, "md").split("\n")
    assert len(md) == len(rows) + 2 and set(md[1]) <= set("|-:")
    text = format_table(header, rows, "text").split("\n")
    assert len(text) == len(rows) + 1
    for line, row in zip(text, [header, *rows]):
        assert all(cell.strip() in line for cell in row)


def test_text_columns_line_up_and_a_bad_format_is_named():
    text = format_table(["run", "knn"], [["a", "71.00"], ["longer-name", "5.00"]]).splitlines()
    assert len({len(line) for line in text}) == 1 and text[1].endswith("71.00") and text[2].endswith(" 5.00")
    with pytest.raises(ValueError, match="'tsv'"):
        format_table(["a"], [], "tsv")
    with pytest.raises(ValueError, match="2 cells"):
        format_table(["a", "b"], [["x"]])

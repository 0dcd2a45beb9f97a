"""The crowded-scenes benchmark's variants are configs the library accepts, each its own training.

The benchmark reuses a finished run whose training key matches (benchmarks/_harness.py): two
variants that differ in an option but share a key would silently share one run, and a variant
whose overrides the config refuses would fail only after the runs before it have trained.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from _protocol import BUDGETS, SCENE_CHOICES, variant_config  # noqa: E402
from crowded_scenes import variants_of  # noqa: E402

from annoboot.config import to_dict  # noqa: E402
from helpers import needs_fmnist  # noqa: E402


@pytest.mark.parametrize("scenes", ["crowded_128_plaid", "crowded_128_plaid_max", "crowded_plain"])
def test_every_crowded_scenes_variant_loads_and_trains_apart(scenes, tmp_path):
    variants = variants_of(dict(SCENE_CHOICES[scenes]))
    trainings = {}  # run directory -> (variant, its training settings)
    for name, variant in variants.items():
        cfg = variant_config(variant, seed=0, budget=BUDGETS["cpu"], user=[], out_dir=str(tmp_path))
        settings = to_dict(cfg)
        settings.pop("eval")
        settings["train"].pop("out_dir")
        if cfg.train.out_dir in trainings:
            # One run for two variants only where they ask for the same training (on scenes
            # without background, simclr/crowded is simclr/crowded_plain, and so on).
            other, other_settings = trainings[cfg.train.out_dir]
            assert settings == other_settings, f"{name} and {other} train differently but share a run"
        trainings[cfg.train.out_dir] = (name, settings)
    if scenes != "crowded_plain":  # with a background, every variant is a training of its own
        assert len(trainings) == len(variants)


def test_the_seven_target_screen_renders_the_views_of_the_recipe_it_varies(tmp_path):
    """ab/asym_targets_7 is meant to spend the same bootstrap views per step as ab/asym_targets
    (16 x 8 = 32 x 4), so the two differ in how the views are split, not in how many."""
    variants = variants_of(dict(SCENE_CHOICES["crowded_128_plaid"]))

    def bootstrap_views_per_step(name):
        cfg = variant_config(variants[name], seed=0, budget=BUDGETS["cpu"], user=[], out_dir=str(tmp_path))
        images = round(cfg.train.batch_size * cfg.method.bootstrap_fraction)
        return images * cfg.views.bootstrap_views

    assert bootstrap_views_per_step("ab/asym_targets_7") == bootstrap_views_per_step("ab/asym_targets") == 128


def test_a_table_from_saved_runs_keeps_the_seeds_asked_for(tmp_path, monkeypatch):
    """crowded_scenes.py --from-json merges saved runs; with --seeds it keeps only those seeds'
    runs (the figures a per-seed comparison needs), without it every saved run."""
    import json

    import crowded_scenes

    def run(variant, seed, knn):
        figures = {"knn": knn, "linear": knn, "map": knn}
        return {"variant": variant, "seed": seed, "steps": 10, "views_seen": 100, "train_seconds": 1.0,
                "items": figures, "in_context": figures, "scenes_in_context": figures}

    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps({"families": ["items", "in_context", "scenes_in_context"], "scene_settings": {},
                                 "runs": [run(v, s, 10.0 * s + (v == "ab/asym")) for v in ("simclr/crowded", "ab/asym")
                                          for s in (0, 1)]}))

    def merged(*extra):
        out = tmp_path / "merged.json"
        monkeypatch.setattr(sys, "argv", ["crowded_scenes.py", "--from-json", str(saved), "--json", str(out), *extra])
        assert crowded_scenes.main() == 0
        return json.loads(out.read_text())

    assert merged()["seeds"] == [0, 1] and len(merged()["runs"]) == 4
    only_first = merged("--seeds", "0")
    assert only_first["seeds"] == [0] and {r["seed"] for r in only_first["runs"]} == {0}


def test_merge_tables_reads_the_probe_families_its_files_saved(tmp_path, monkeypatch, capsys):
    """benchmarks/merge_tables.py on in-context JSONs (captions.py, crowded_scenes.py) prints their
    own families and the zero-shot column, averaged over the files' seeds; files of other
    families are refused by name."""
    import json

    import merge_tables

    def table(seed, zero_shot, families=("items", "in_context", "scenes_in_context")):
        figures = {"knn": 50.0 + seed, "linear": 60.0, "map": 70.0}
        run = {"variant": "clip", "seed": seed, "steps": 10, "views_seen": 100, "train_seconds": 60.0,
               **{family: figures for family in families}, "image_text": {"zero_shot": zero_shot}}
        path = tmp_path / f"s{seed}_{len(families)}.json"
        path.write_text(json.dumps({"title": "t", "date": "d", "device": "cpu", "budget": "cpu",
                                    "families": list(families), "runs": [run]}))
        return str(path)

    monkeypatch.setattr(sys, "argv", ["merge_tables.py", table(0, 20.0), table(1, 24.0)])
    assert merge_tables.main() == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("clip"))
    assert "50.50 ±0.50" in row and row.rstrip().endswith("22.00 ±2.00")  # kNN and zero-shot over both seeds
    monkeypatch.setattr(sys, "argv", ["merge_tables.py", table(0, 20.0), table(1, 24.0, families=("items",))])
    with pytest.raises(SystemExit, match=r"s1_1\.json: probe families \['items'\] differ"):
        merge_tables.main()


def test_merge_tables_joins_in_context_files_that_saved_no_families(tmp_path, monkeypatch, capsys):
    """coco_in_context.py's files (before they saved their families) merge by the families every
    run holds; FILE=NAME tells one variant's two budgets apart, --json writes the merged runs, and
    a file probed on other scenes is refused by name."""
    import json

    import merge_tables

    def table(name, variant, knn, test="coco_boxes: 1000 scenes"):
        figures = {"knn": knn, "linear": 60.0, "map": 70.0}
        runs = [{"variant": variant, "seed": seed, "steps": 10, "views_seen": 100, "train_seconds": 60.0,
                 "in_context": {**figures, "knn": knn + seed}, "scenes_in_context": figures,
                 "scenes_in_context_f1": {"knn": 1.0}} for seed in (0, 1)]
        path = tmp_path / name
        path.write_text(json.dumps({"title": "t", "date": "d", "device": "cpu", "train": "coco_boxes: 3000 scenes",
                                    "test": test, "runs": runs}))
        return str(path)

    base, short, long = table("a.json", "simclr/items", 40.0), table("b.json", "ab/x", 45.0), table("c.json", "ab/x", 47.0)
    out = tmp_path / "merged.json"
    monkeypatch.setattr(sys, "argv", ["merge_tables.py", base, f"{short}=ab/short", f"{long}=ab/long",
                                      "--diff", "simclr/items", "ab/long", "--json", str(out)])
    assert merge_tables.main() == 0
    diff = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("ab/long - simclr/items"))
    assert diff.split()[3:5] == ["+7.00", "+0.00"]  # in-context kNN, then linear
    merged = json.loads(out.read_text())
    assert merged["families"] == ["in_context", "scenes_in_context"]
    assert sorted({run["variant"] for run in merged["runs"]}) == ["ab/long", "ab/short", "simclr/items"]
    assert len(merged["runs"]) == 6
    other = table("d.json", "ab/y", 50.0, test="coco_boxes: 10 scenes")
    monkeypatch.setattr(sys, "argv", ["merge_tables.py", base, other])
    with pytest.raises(SystemExit, match=r"d\.json: its test \(coco_boxes: 10 scenes\) differ"):
        merge_tables.main()
    (tmp_path / "e.json").write_text("[]")  # e.g. a localisation.py file
    monkeypatch.setattr(sys, "argv", ["merge_tables.py", base, str(tmp_path / "e.json")])
    with pytest.raises(SystemExit, match=r"e\.json: not a protocol's --json"):
        merge_tables.main()


def test_the_caption_benchmarks_whole_batch_variant_keeps_clips_batch_and_costs_clips_time(tmp_path):
    """captions.py's ab_clip/whole_asym gives CLIP's loss the same 256 captioned images a step as
    the clip variant (the published ab_clip split halves them), adds 32 bootstrap images of 1
    source and 3 targets, and trains 5,500 / 1.42 steps (to the ten); each variant is a training of its own."""
    from captions import DEFAULT_VARIANTS, variants_of

    from annoboot.methods.bootstrapping import ab_batch_sizes

    variants = variants_of(dict(SCENE_CHOICES["crowded_128_plaid"]), "cpu")
    configs = {name: variant_config(v, seed=0, budget=BUDGETS["cpu"], user=[], out_dir=str(tmp_path))
               for name, v in variants.items()}
    assert len({cfg.train.out_dir for cfg in configs.values()}) == len(configs)
    whole, published, clip = configs["ab_clip/whole_asym"], configs["ab_clip"], configs["clip"]
    assert ab_batch_sizes(whole, 2) == {"annotation": clip.train.batch_size, "bootstrap": 32}
    assert ab_batch_sizes(published, 2)["annotation"] == clip.train.batch_size // 2
    assert (whole.views.bootstrap_views, whole.views.bootstrap_source_views) == (4, 1)
    assert whole.method.target_network == "online"
    assert abs(whole.train.steps * 1.42 - clip.train.steps) < 0.005 * clip.train.steps  # equal time
    assert DEFAULT_VARIANTS == ("clip", "ab_clip")  # the default table stays the two recipes


def test_the_caption_benchmarks_equal_time_and_equal_pairs_variants(tmp_path):
    """ab_clip/equal_time trains the published ABCLIP for 5,500 / 1.19 steps (its measured price);
    clip/equal_pairs trains CLIP on as many caption pairs as that run's CLIP loss sees; captions
    that name every class make runs of their own, apart from the weak captions' runs."""
    from captions import variants_of

    from annoboot.methods.bootstrapping import ab_batch_sizes

    def configs(scenes):
        return {name: variant_config(v, seed=0, budget=BUDGETS["cpu"], user=[], out_dir=str(tmp_path))
                for name, v in variants_of(dict(SCENE_CHOICES[scenes]), "cpu").items()}

    named, weak = configs("crowded_128_plaid_named"), configs("crowded_128_plaid")
    equal_time, equal_pairs, clip = named["ab_clip/equal_time"], named["clip/equal_pairs"], named["clip"]
    assert abs(equal_time.train.steps * 1.19 - clip.train.steps) < 0.005 * clip.train.steps
    pairs_per_step = ab_batch_sizes(equal_time, 2)["annotation"]
    assert equal_pairs.train.steps * equal_pairs.train.batch_size == equal_time.train.steps * pairs_per_step
    assert equal_time.data.annotation.scenes.captions == "complete"
    assert weak["clip"].data.annotation.scenes.captions == "weak"
    assert not {c.train.out_dir for c in named.values()} & {c.train.out_dir for c in weak.values()}


# Each committed scenes recipe and the crowded_scenes.py row whose figures its header quotes.
RECIPE_ROWS = [("scenes_simclr", "simclr/crowded"), ("scenes_simclr_mixture", "simclr/mixture"),
               ("scenes_ab_simclr", "ab/asym_targets_src64_mean_sharp"),
               ("scenes_ab_simclr_decoupled", "ab/decoupled_asym_targets_src64_mean")]


@pytest.mark.parametrize("recipe, row", RECIPE_ROWS)
def test_each_scenes_recipe_trains_what_its_benchmark_row_measured(recipe, row, tmp_path):
    """A recipe's header quotes the figures of a benchmark row: the two train on the same data, views,
    method, model and optimiser, and differ only in the run's length, bookkeeping and (the benchmark
    probes apart) eval. A recipe edited without its row, or a row without its recipe, fails here."""
    from annoboot.recipe import load_config

    variants = variants_of(dict(SCENE_CHOICES["crowded_128_plaid"]))
    measured = to_dict(variant_config(variants[row], seed=0, budget=BUDGETS["cpu"], user=[], out_dir=str(tmp_path)))
    committed = to_dict(load_config(str(Path(__file__).resolve().parents[1] / "configs" / "cpu" / f"{recipe}.yaml")))
    for trained in (measured, committed):  # (not `settings`: the module's hypothesis import)
        if trained["model"]["value_readout"] == "region_mean":  # no decoder is built: its options are unused
            for key in ("decoder_depth", "decoder_dim", "decoder_heads"):
                trained["model"].pop(key)
        for key in ("steps", "out_dir", "ckpt_every", "progress"):
            trained["train"].pop(key)
    for section in ("data", "views", "model", "method", "train"):
        assert measured[section] == committed[section], (recipe, row, section)


def test_localisation_scores_each_run_on_the_scenes_its_moves_trained_on(tmp_path):
    """benchmarks/localisation.py: a decoupled run (annotations from items or the mixture) is scored
    on its bootstrap source's crowded scenes, not on the mixture's mostly single-item scenes; a
    coupled run on its own scenes; a run on items alone has none."""
    from localisation import moves_source

    scenes = dict(SCENE_CHOICES["crowded_128_plaid"])
    variants = variants_of(scenes)
    config = lambda name: variant_config(variants[name], seed=0, budget=BUDGETS["cpu"], user=[],  # noqa: E731
                                         out_dir=str(tmp_path))
    crowded = config("ab/asym_targets").data.annotation.scenes
    assert moves_source(config("ab/asym_targets")) == crowded
    assert moves_source(config("ab/decoupled_asym_targets")) == crowded
    mixture = config("ab/mixture_asym_targets")
    assert mixture.data.annotation.scenes != crowded and moves_source(mixture) == crowded
    assert moves_source(config("simclr/items")) is None


def test_move_geometry_measures_the_share_of_a_target_inside_its_source():
    """benchmarks/move_geometry.py: a target inside its source counts 1, one half across its edge
    0.5, one beside it 0, whatever the other targets of the scene."""
    import torch
    from move_geometry import inside_fraction

    source = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.2, 0.2, 1.0, 1.0]])
    targets = torch.tensor([[[0.1, 0.1, 0.3, 0.3], [0.4, 0.0, 0.6, 0.2], [0.6, 0.6, 0.9, 0.9]],
                            [[0.0, 0.0, 0.1, 0.1], [0.1, 0.3, 0.3, 0.5], [0.2, 0.2, 1.0, 1.0]]])
    assert torch.allclose(inside_fraction(source, targets), torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]]))


_SAVED_TABLE = json.dumps({"title": "t", "date": "d", "device": "cpu", "families": ["items"],
                           "runs": [{"variant": "simclr/crowded", "seed": 0, "items": {"knn": 50.0}}]})


@settings(max_examples=200, deadline=None)
@given(damage=st.one_of(
    st.integers(0, len(_SAVED_TABLE) - 1).map(lambda cut: _SAVED_TABLE[:cut].encode()),  # a cut-off copy
    st.binary(max_size=64),  # any bytes at all
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=4),  # JSON of another shape
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["runs", "variant", "seed"]),
                                                                             inner, max_size=3),
                 max_leaves=6).map(lambda value: json.dumps(value).encode()),
))
def test_a_damaged_saved_table_is_refused_by_name_by_both_readers(damage, tmp_path_factory):
    """crowded_scenes.py --from-json and merge_tables.py read a saved table through one reader:
    a cut-off, garbled or misshapen file stops them with its own name, never a traceback."""
    import crowded_scenes
    import merge_tables
    from _harness import read_protocol_json

    path = tmp_path_factory.mktemp("saved") / "damaged.json"
    path.write_bytes(damage)
    try:
        data = read_protocol_json(str(path))
    except SystemExit as stop:
        assert str(stop).startswith(f"{path}: ")
    else:  # what it accepts is a table whose every run names a variant and a seed
        assert all("variant" in run and "seed" in run for run in data["runs"])
        return
    for argv in (["crowded_scenes.py", "--from-json", str(path)], ["merge_tables.py", str(path)]):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "argv", argv)
            with pytest.raises(SystemExit, match=re.escape(str(path))):
                (crowded_scenes if argv[0] == "crowded_scenes.py" else merge_tables).main()


def test_a_missing_saved_table_is_named():
    import merge_tables

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["merge_tables.py", "no/such/table.json"])
        with pytest.raises(SystemExit, match=r"^no/such/table\.json: no such file$"):
            merge_tables.main()


@needs_fmnist
def test_a_table_row_keeps_its_runs_last_logged_diagnostics_when_trained_and_when_reused(tiny_config, tmp_path):
    """A benchmark's --json is what gets committed, not the run folder: the row carries the run's
    last metrics.jsonl row (losses, reward entropy, moves' agreement), also for a reused run."""
    from _harness import Variant, read_protocol_json, run_row, write_json

    cfg = tiny_config("method.name=ab_simclr", "train.steps=4", "train.log_every=2", "train.batch_size=16",
                      "data.annotation.limit=500")
    variant = Variant("ab/tiny", "tiny")
    trained = run_row(variant, 0, cfg, evaluate=lambda method, cfg, device: {"probe": 1.0})
    logged = [json.loads(line) for line in (Path(cfg.train.out_dir) / "metrics.jsonl").read_text().splitlines()]
    assert trained["last_logged"]["step"] == logged[-1]["step"] == 4
    assert "ab/target_entropy" in trained["last_logged"]
    assert trained["last_logged"] == {key: value for key, value in logged[-1].items() if isinstance(value, (int, float))}
    reused = run_row(variant, 0, cfg, evaluate=lambda method, cfg, device: {"probe": 1.0})
    assert reused["train_seconds"] == trained["train_seconds"]  # the finished run reused, not trained again
    assert reused["last_logged"] == trained["last_logged"]
    saved = tmp_path / "table.json"
    write_json(str(saved), "a table", [reused])
    assert read_protocol_json(str(saved))["runs"][0]["last_logged"] == trained["last_logged"]

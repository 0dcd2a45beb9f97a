"""Configs: recipes, overrides and the errors they give."""

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from annoboot.config import Config
from annoboot.errors import AnnobootError
from annoboot.recipe import load_config

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  steps: 7\nmethod:\n  name: simclr\n")
    cfg = load_config(recipe, ["train.lr=0.5", "views.crop_scale=[0.2,1.0]"])
    assert isinstance(cfg, Config)
    assert cfg.train.steps == 7 and cfg.method.name == "simclr" and cfg.train.lr == 0.5
    assert cfg.views.crop_scale == [0.2, 1.0]
    assert cfg.data.bootstrap is None  # coupled by default


def test_decoupled_bootstrap_source_from_override():
    cfg = load_config(None, ["data.bootstrap.kind=image_folder", "data.bootstrap.root=/x"])
    assert cfg.data.bootstrap.kind == "image_folder" and cfg.data.bootstrap.root == "/x"


def test_unknown_key_names_the_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  stepz: 7\n")
    with pytest.raises(AnnobootError, match=r"train\.stepz") as err:
        load_config(recipe)
    assert str(recipe) in str(err.value)
    with pytest.raises(AnnobootError, match=r"method\.gama"):
        load_config(None, ["method.gama=0.5"])


def test_wrong_type_names_key_and_value():
    with pytest.raises(AnnobootError, match=r"train\.steps.*many") as err:
        load_config(None, ["train.steps=many"])
    assert "command-line" in str(err.value)


def test_bad_choice_lists_the_choices():
    with pytest.raises(AnnobootError, match="simclr, ab_simclr"):
        load_config(None, ["method.name=byol"])
    with pytest.raises(AnnobootError, match="method.aggregate"):
        load_config(None, ["method.aggregate=median"])


def test_missing_recipe_and_malformed_override(tmp_path):
    with pytest.raises(AnnobootError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(AnnobootError, match="key=value"):
        load_config(None, ["train.steps"])
    with pytest.raises(AnnobootError, match="gamma"):
        load_config(None, ["method.gamma=1.5"])


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(["eval.train.scenes", "model.backbone_kwargs", "views.bootstrap_scale", "train.steps",
                            "eval.probes", "data.annotation"]),
       value=st.text(alphabet="{}[]:,' \"ab1-=.#&*!|>%@`", max_size=16))
def test_any_override_value_loads_or_is_refused_naming_the_override(key, value):
    # Values are parsed as YAML: text that is not valid YAML (`{a:1,b:2}` is a scanner error)
    # must come back as an error naming the override, not as a YAML traceback.
    try:
        load_config(None, [f"{key}={value}"])
    except AnnobootError as exc:
        assert key in str(exc)


def test_an_override_that_is_not_yaml_says_how_to_write_it():
    with pytest.raises(AnnobootError, match=re.escape("override 'eval.train.scenes={seed:3,item_size:[24,40]}': its value "
                                                      "is not valid YAML (found unexpected ':'); write a dict as")):
        load_config(None, ["eval.train.scenes={seed:3,item_size:[24,40]}"])


def test_dict_override_replaces_the_recipe_dict(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  backbone_kwargs: {patch_size: 8, depth: 2}\n")
    assert load_config(recipe, ["model.backbone=resnet18", "model.backbone_kwargs={}"]).model.backbone_kwargs == {}
    assert load_config(recipe, ["model.backbone_kwargs={depth: 4}"]).model.backbone_kwargs == {"depth": 4}
    # ... also when the override sets the section around it.
    assert load_config(recipe, ["model={backbone: resnet18, backbone_kwargs: {}}"]).model.backbone_kwargs == {}


KWARG_VALUES = st.one_of(st.integers(1, 64), st.booleans(), st.sampled_from(["avg", "token", ""]),
                         st.lists(st.integers(1, 9), max_size=3))


@settings(max_examples=60, deadline=None)
@given(kwargs=st.dictionaries(st.sampled_from(["patch_size", "depth", "global_pool", "drop_path_rate", "in_chans",
                                                "output_stride", "embed_dim"]), KWARG_VALUES, max_size=4))
def test_a_recipe_or_a_saved_run_sets_backbone_kwargs_whole(tmp_path_factory, kwargs):
    """What a recipe file or a run's saved config gives as model.backbone_kwargs is what the model
    is built with, {} included (a CNN's): merged into the default {patch_size: 4}, a run trained
    with {} could not be loaded again, and a recipe's {depth: 4} would train 4-px patches."""
    from omegaconf import OmegaConf

    from annoboot.recipe import config_from_saved

    recipe = tmp_path_factory.mktemp("recipe") / "r.yaml"
    recipe.write_text(OmegaConf.to_yaml({"model": {"backbone": "resnet18", "backbone_kwargs": kwargs}}))
    assert load_config(recipe).model.backbone_kwargs == kwargs
    assert config_from_saved({"model": {"backbone_kwargs": kwargs}}).model.backbone_kwargs == kwargs
    # A recipe without the key keeps the default; other dicts still merge field by field.
    assert load_config(None).model.backbone_kwargs == {"patch_size": 4}
    saved = config_from_saved({"data": {"annotation": {"kind": "fmnist_scenes", "scenes": {"canvas": 96}}}})
    assert saved.data.annotation.scenes.canvas == 96 and saved.data.annotation.scenes.seed == 0


def test_a_dict_override_fills_an_optional_source_and_replaces_a_plain_dict():
    cfg = load_config(None, ["eval.retrieval={kind: tuxpaint, split: test}", "model.backbone_kwargs={depth: 2}"])
    assert cfg.eval.retrieval.kind == "tuxpaint" and cfg.eval.retrieval.split == "test"
    assert cfg.eval.retrieval.max_short_side == 256  # the dataclass default fills the rest
    assert cfg.model.backbone_kwargs == {"depth": 2}  # replaced, not merged with patch_size
    with pytest.raises(AnnobootError, match="eval.retrieval"):
        load_config(None, ["eval.retrieval={kind: tuxpaint, colour: red}"])


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("configs/**/*.yaml")))
def test_every_recipe_loads_and_names_its_command_and_result(recipe):
    load_config(ROOT / recipe)
    header = (ROOT / recipe).read_text().split("\n\n")[0]
    for field in ("Command:", "Hardware:", "Runtime:", "Expected:"):
        assert field in header, f"{recipe} header lacks '{field}'"
    placeholders = re.findall(r"\b[A-Z]+_[A-Z_]+\b", header)  # e.g. MEASURED_RESULT left by a draft
    assert not placeholders, f"{recipe} header still holds {placeholders}"


def test_the_clip_and_abclip_recipes_differ_only_in_the_method():
    clip, ab = (load_config(f"configs/openclipart_{name}.yaml") for name in ("clip", "ab_clip"))
    assert (clip.method.name, ab.method.name) == ("clip", "ab_clip")
    for section in ("data", "model", "train", "eval"):
        a, b = getattr(clip, section), getattr(ab, section)
        differing = [k for k in vars(a) if getattr(a, k) != getattr(b, k) and not k.startswith("decoder") and k != "out_dir"]
        assert not differing, (section, differing)


def assert_same_but_steps(recipe, other, method_allowed=()):
    """Two recipes agree option for option in views, model, method (but method_allowed), eval and train, but
    train.steps and out_dir."""
    for section, allowed in (("views", ()), ("model", ()), ("method", method_allowed), ("eval", ()),
                             ("train", ("steps", "out_dir"))):
        a, b = getattr(recipe, section), getattr(other, section)
        differing = [k for k in vars(a) if getattr(a, k) != getattr(b, k) and k not in allowed]
        assert not differing, (section, differing)


def test_the_decoupled_scenes_recipe_differs_only_in_its_sources_and_steps():
    # scenes_ab_simclr_decoupled.yaml copies scenes_ab_simclr.yaml: the scenes move from the base
    # batch to the bootstrap source, the items take the base batch, and the run is half as long.
    # Its reward stays at SimCLR's temperature: the scenes recipe's sharper reward (0.05) was
    # measured on the scenes source only.
    scenes, decoupled = (load_config(f"configs/cpu/{name}.yaml") for name in ("scenes_ab_simclr", "scenes_ab_simclr_decoupled"))
    assert decoupled.data.bootstrap == scenes.data.annotation
    assert (decoupled.data.annotation.kind, scenes.data.bootstrap) == ("fashion_mnist", None)
    assert (scenes.train.steps, decoupled.train.steps) == (4000, 2000)
    assert (scenes.method.reward_temperature, decoupled.method.reward_temperature) == (0.05, None)
    assert_same_but_steps(scenes, decoupled, method_allowed=("reward_temperature",))


@pytest.mark.parametrize("weights, problem", [([1.0], "1 weight"), ([1.0, -0.5], ">= 0"), ([0.0, 0.0], "positive sum")])
def test_mix_weights_are_checked_against_the_patterns(tmp_path, weights, problem):
    from annoboot.recipe import load_config

    overrides = ["data.bootstrap.kind=webdataset", f"data.bootstrap.root={tmp_path / 'a.tar'}::{tmp_path / 'b.tar'}",
                 f"data.bootstrap.mix_weights=[{', '.join(map(str, weights))}]"]
    with pytest.raises(AnnobootError, match=f"data.bootstrap.mix_weights.*{problem}"):
        load_config(None, overrides)
    with pytest.raises(AnnobootError, match="webdataset only"):
        load_config(None, ["data.annotation.kind=image_folder", "data.annotation.root=x",
                           "data.annotation.mix_weights=[1]"])


def test_the_mixture_recipe_differs_from_the_scenes_recipe_only_in_its_source_and_steps():
    # scenes_simclr_mixture.yaml is crowded_scenes.py's simclr/mixture: scenes_simclr.yaml with
    # items mixed into its scenes, probed on the same crowded scenes, at the decoupled budget.
    scenes, mixture = (load_config(f"configs/cpu/{name}.yaml") for name in ("scenes_simclr", "scenes_simclr_mixture"))
    a, b = scenes.data.annotation.scenes, mixture.data.annotation.scenes
    assert (b.num_scenes, b.single_fraction, a.single_fraction) == (80000, 0.75, 0.0)
    assert [k for k in vars(a) if getattr(a, k) != getattr(b, k)] == ["num_scenes", "single_fraction"]
    assert (scenes.train.steps, mixture.train.steps) == (5000, 2500)
    assert_same_but_steps(scenes, mixture)

"""Source kinds register themselves with their own options (data/registry.py); config composes
SourceConfig from them and each option class checks its own values."""

from dataclasses import dataclass, fields

import pytest

from annoboot import config
from annoboot.config import SourceConfig
from annoboot.data import SOURCE_KINDS, build_source
from annoboot.data.registry import SOURCE_REGISTRY, SourceKind, source_option_classes
from annoboot.data.scenes import SceneSourceOptions
from annoboot.errors import AnnobootError
from annoboot.recipe import load_config


def test_every_registered_option_is_a_source_config_field():
    names = {f.name for f in fields(SourceConfig)}
    for option_class in source_option_classes():
        assert {f.name for f in fields(option_class)} <= names, option_class
    assert {"scenes", "mix_weights", "decode_on", "frame_stride", "labels_from_subfolders"} <= names
    assert SOURCE_KINDS[0] == "fashion_mnist" and set(SOURCE_KINDS) == set(SOURCE_REGISTRY)


def test_two_kinds_declaring_one_option_are_refused(monkeypatch):
    @dataclass
    class Clash:
        scenes: int = 0  # already SceneSourceOptions'

    monkeypatch.setitem(SOURCE_REGISTRY, "clash", SourceKind("clash", lambda cfg: None, Clash))
    with pytest.raises(AnnobootError, match="'<source>.scenes' is declared by both SceneSourceOptions and Clash"):
        config._compose_source_config()


def test_build_source_dispatches_by_kind():
    source = build_source(SourceConfig(kind="fmnist_scenes", split="test", limit=8))
    assert type(source).__name__ == "SceneSource" and len(source) == 8
    with pytest.raises(AnnobootError, match="webdataset shards are streamed for training only"):
        build_source(SourceConfig(kind="webdataset", root="x.tar"))
    with pytest.raises(AnnobootError, match="unknown data source kind 'nope'; choose one of fashion_mnist"):
        build_source(SourceConfig(kind="nope"))


@pytest.mark.parametrize("overrides, message", [
    (["eval.test.kind=jpegs"], "key 'eval.test.kind' is 'jpegs'; choose one of fashion_mnist"),
    (["data.annotation.kind=video_folder", "data.annotation.root=v.mp4", "data.annotation.frame_stride=0"],
     "key 'data.annotation.frame_stride' is 0; out of range: it must be >= 1"),
    (["data.annotation.decode_on=device"], "'data.annotation.decode_on' and 'data.annotation.mix_weights' apply to kind=webdataset only"),
    (["data.bootstrap.kind=webdataset", "data.bootstrap.root=a.tar", "data.bootstrap.decode_on=gpu"],
     "key 'data.bootstrap.decode_on' is 'gpu'; choose one of cpu, device"),
    (["eval.train.kind=fmnist_scenes", "eval.train.scenes.items=[3, 2]"], "key 'eval.train.scenes.items' must be"),
    (["eval.retrieval.kind=openclipart", "eval.retrieval.max_bad_fraction=0"], "key 'eval.retrieval.max_bad_fraction' is 0.0; out of range"),
])
def test_each_kind_checks_its_own_options_naming_the_key(overrides, message):
    with pytest.raises(AnnobootError, match=message.replace("[", r"\[")):
        load_config(None, overrides)


def test_options_of_another_kind_are_checked_only_where_they_are_read():
    # Scene settings that no scene source reads are not checked (the recipe may switch kinds).
    cfg = load_config(None, ["data.annotation.scenes.items=[3, 2]"])
    assert cfg.data.annotation.kind == "fashion_mnist"
    assert SOURCE_REGISTRY["fmnist_scenes"].options is SceneSourceOptions

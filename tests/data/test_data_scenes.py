"""Specifications of the Fashion-MNIST scene generator (data/scene_generator.py, data/scene_captions.py, data/scenes.py): scenes, boxes, weak
captions, and the scene settings of a config."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import (
    needs_fmnist,
    one_thread,  # noqa: F401  (an autouse fixture: tiny workloads run on one thread)
)
from hypothesis import given, settings
from hypothesis import strategies as st

from annoboot.data import build_source
from annoboot.data.fashion_mnist import FashionMNISTSource
from annoboot.data.scene_captions import _COUNT_WORDS, CLASS_NAMES, classes_in_caption, complete_caption, weak_caption
from annoboot.data.scene_generator import CHUNK, SceneGeneratorOptions, generate_scenes, resize_items
from annoboot.data.scenes import SceneSource
from annoboot.errors import AnnobootError
from annoboot.recipe import load_config

SMALL = SceneGeneratorOptions(num_scenes=120, canvas=64, items=[2, 5], item_size=[14, 36], pool_limit=3000)
CROWDED = SceneGeneratorOptions(preset="crowded", num_scenes=120, pool_limit=3000)  # 4-6 items of 12-20 px over a grating


def constant_pool(value: int, size: int = 50):
    """A pool whose every item is a flat square of one grey level, labelled 0..9 in turn."""
    return torch.full((size, 28, 28), value, dtype=torch.uint8), torch.arange(size) % 10


@pytest.fixture(scope="module")
def fmnist_train():
    return FashionMNISTSource(split="train", limit=3000)


@pytest.fixture(scope="module")
def fmnist_test():
    return FashionMNISTSource(split="test", limit=3000)


@needs_fmnist
def test_same_seed_gives_identical_scenes_and_captions_another_seed_differs(fmnist_train):
    a = SceneSource(SMALL, "train", pool=fmnist_train)
    b = SceneSource(SMALL, "train", pool=fmnist_train)
    assert torch.equal(a.in_memory(), b.in_memory())
    assert a.captions == b.captions
    assert all(torch.equal(x, y) for x, y in zip(a.item_boxes, b.item_boxes))
    c = SceneSource(SceneGeneratorOptions(**{**SMALL.__dict__, "seed": 1}), "train", pool=fmnist_train)
    assert not torch.equal(a.in_memory(), c.in_memory())
    assert a.captions != c.captions


def test_a_limit_keeps_a_prefix_of_the_same_scenes():
    images, labels = constant_pool(200)
    cfg = SceneGeneratorOptions(num_scenes=CHUNK + 40, canvas=32, item_size=[8, 16])
    full = generate_scenes(images, labels, cfg, "train")
    head = generate_scenes(images, labels, cfg, "train", num_scenes=CHUNK + 5)
    assert torch.equal(full.images[: CHUNK + 5], head.images)
    assert full.captions[: CHUNK + 5] == head.captions


def test_scenes_use_only_their_own_pool_for_items_and_clutter():
    # Train items are flat 255, test items flat 100: a train canvas can only hold background 0,
    # train clutter (255 * contrast) and train items; no value of a test item or its clutter.
    cfg = SceneGeneratorOptions(num_scenes=300, canvas=48, item_size=[10, 24], clutter=6, clutter_contrast=0.3)
    train = generate_scenes(*constant_pool(255), cfg, "train")
    test = generate_scenes(*constant_pool(100), cfg, "test")
    assert set(train.images.unique().tolist()) <= {0, round(255 * 0.3), 255}
    assert set(test.images.unique().tolist()) <= {0, round(100 * 0.3), 100}
    assert train.clutter_indices.numel() > 0 and int(train.item_indices.max()) < 50


@needs_fmnist
@pytest.mark.parametrize("settings", [SMALL, CROWDED], ids=["classic", "crowded"])
def test_a_scene_source_draws_items_from_its_own_split_only(fmnist_train, fmnist_test, settings):
    for split, pool in (("train", fmnist_train), ("test", fmnist_test)):
        scenes = SceneSource(settings, split, pool=pool)
        assert scenes.pool_split == split
        flat = scenes.scenes
        assert int(flat.item_indices.max()) < len(pool)
        assert flat.clutter_indices.numel() == 0 or int(flat.clutter_indices.max()) < len(pool)  # crowded: no clutter
        assert torch.equal(flat.item_labels, pool.labels[flat.item_indices])
    with pytest.raises(AnnobootError, match="split 'test'"):
        SceneSource(settings, "train", pool=fmnist_test)


@needs_fmnist
@pytest.mark.parametrize("settings", [SMALL, CROWDED], ids=["classic", "crowded"])
def test_boxes_lie_in_the_canvas_and_frame_the_pasted_item(fmnist_train, settings):
    scenes = SceneSource(settings, "train", pool=fmnist_train)
    resolved = settings.resolved()
    canvas = resolved.canvas
    for i, (boxes, indices) in enumerate(zip(scenes.item_boxes, scenes.item_indices)):
        assert resolved.items[0] <= len(boxes) <= resolved.items[1]
        assert (boxes >= 0).all() and (boxes <= 1).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        # The last item pasted is covered by nothing: its opaque pixels are on the canvas as resized.
        x0, y0, x1, y1 = (boxes[-1] * canvas).round().long().tolist()
        assert x1 - x0 == y1 - y0 and resolved.item_size[0] <= x1 - x0 <= resolved.item_size[1]
        item = resize_items(fmnist_train.in_memory()[indices[-1 :], 0], x1 - x0)[0]
        region = scenes.in_memory()[i, 0, y0:y1, x0:x1]
        opaque = item >= 48
        assert opaque.any() and torch.equal(region[opaque], item[opaque])


@needs_fmnist
def test_single_item_canvases_are_whole_items_and_label_the_largest_item(fmnist_train):
    cfg = SceneGeneratorOptions(**{**SMALL.__dict__, "single_fraction": 1.0})
    scenes = SceneSource(cfg, "train", pool=fmnist_train)
    assert all(torch.equal(b, torch.tensor([[0.0, 0.0, 1.0, 1.0]])) for b in scenes.item_boxes)
    assert torch.equal(scenes.labels, torch.cat(scenes.item_labels))
    mixed = SceneSource(SMALL, "train", pool=fmnist_train)
    for boxes, labels, label in zip(mixed.item_boxes, mixed.item_labels, mixed.labels):
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        assert label in labels[area == area.max()]


def test_generating_many_scenes_takes_seconds():
    import time

    images = torch.randint(0, 256, (1000, 28, 28), dtype=torch.uint8)
    start = time.perf_counter()
    generate_scenes(images, torch.arange(1000) % 10, SceneGeneratorOptions(num_scenes=3000), "train")
    assert time.perf_counter() - start < 5  # 20k scenes take about 4 s on one shared core


@needs_fmnist
def test_captions_name_present_classes_and_never_all_of_several(fmnist_train):
    scenes = SceneSource(SceneGeneratorOptions(**{**SMALL.__dict__, "num_scenes": 400}), "train", pool=fmnist_train)
    wordings = set()
    for caption, named, labels in zip(scenes.captions, scenes.named_classes, scenes.item_labels):
        present = set(labels.tolist())
        assert classes_in_caption(caption) == named  # the text names exactly these classes
        assert named and set(named) <= present
        if len(present) >= 2:
            assert len(named) < len(present)
        wordings.add(caption.split(" ")[0])
    assert len(wordings) >= 5  # varied templates


def test_caption_counts_are_true_counts():
    rng = random.Random(0)
    for _ in range(200):
        text, named = weak_caption([7, 7, 7, 8], rng)
        if named == [7] and ("two" in text or "four" in text):
            pytest.fail(f"three sneakers counted wrong: {text!r}")
        assert named in ([7], [8])


@settings(max_examples=200, deadline=None)
@given(labels=st.lists(st.integers(0, 9), min_size=1, max_size=9), seed=st.integers(0, 2**32 - 1))
def test_a_complete_caption_names_every_class_with_a_true_count(labels, seed):
    text, named = complete_caption(labels, random.Random(seed))
    assert named == sorted(set(labels)) == classes_in_caption(text)
    for label in set(labels):  # a count word, where given, is the class's own count
        count = labels.count(label)
        for _, plural in CLASS_NAMES[label]:
            for number, word in _COUNT_WORDS.items():
                if f"{word} {plural}" in text:
                    assert number == count, (text, labels)


def test_complete_captions_change_the_captions_only():
    images, labels = random_pool()
    weak = generate_scenes(images, labels, CROWDED, "train")
    complete = generate_scenes(images, labels, SceneGeneratorOptions(**{**CROWDED.__dict__, "captions": "complete"}), "train")
    assert torch.equal(weak.images, complete.images) and torch.equal(weak.item_boxes, complete.item_boxes)
    per_scene = [set() for _ in complete.captions]
    for scene, label in zip(complete.item_scene.tolist(), complete.item_labels.tolist()):
        per_scene[scene].add(label)
    assert [set(n) for n in complete.named_classes] == per_scene
    assert sum(set(n) != p for n, p in zip(weak.named_classes, per_scene)) > 0.9 * len(per_scene)
    with pytest.raises(AnnobootError, match="data.annotation.scenes.captions.*weak, complete"):
        load_config(None, ["data.annotation.kind=fmnist_scenes", "data.annotation.scenes.captions=all"])


@needs_fmnist
def test_a_config_with_kind_fmnist_scenes_builds_a_captioned_source():
    cfg = load_config(None, ["data.annotation.kind=fmnist_scenes", "data.annotation.scenes.num_scenes=50",
                             "data.annotation.scenes.pool_limit=500", "data.annotation.split=test"])
    source = build_source(cfg.data.annotation)
    assert isinstance(source, SceneSource) and len(source) == 50 and source.pool_split == "test"
    assert source.in_memory().shape == (50, 1, 96, 96) and len(source.captions) == 50


def test_bad_scene_settings_name_the_option():
    with pytest.raises(AnnobootError, match="data.bootstrap.scenes.item_size"):
        load_config(None, ["data.bootstrap={kind: fmnist_scenes}", "data.bootstrap.scenes.item_size=[20, 200]"])
    with pytest.raises(AnnobootError, match="data.annotation.scenes.items"):
        load_config(None, ["data.annotation.kind=fmnist_scenes", "data.annotation.scenes.items=[3, 1]"])


def random_pool(size: int = 300, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (size, 28, 28), generator=generator, dtype=torch.uint8), torch.arange(size) % 10


def test_the_classic_preset_reproduces_the_scenes_made_before_presets_and_backgrounds():
    import hashlib

    cfg = SceneGeneratorOptions(num_scenes=1100, canvas=48, item_size=[10, 24], clutter=3, single_fraction=0.2)
    scenes = generate_scenes(*random_pool(), cfg, "train")
    digest = hashlib.sha1(scenes.images.numpy().tobytes() + scenes.item_boxes.numpy().tobytes()
                          + "|".join(scenes.captions).encode()).hexdigest()
    assert digest == "cf0d003760aaea02d3d27b182013491de800683f"  # the generator of commit 1cb8980, same settings


def test_a_preset_fills_the_options_not_given_and_a_given_option_overrides_it():
    crowded = SceneGeneratorOptions(preset="crowded").resolved()
    assert (crowded.canvas, crowded.items, crowded.item_size, crowded.background) == (64, [4, 6], [12, 20], "grating")
    assert SceneGeneratorOptions(preset="crowded", items=[2, 3], background="none").resolved().items == [2, 3]
    assert SceneGeneratorOptions().resolved().canvas == 96 and SceneGeneratorOptions().resolved().background == "none"
    with pytest.raises(AnnobootError, match="scenes.preset.*crowded"):
        load_config(None, ["data.annotation.kind=fmnist_scenes", "data.annotation.scenes.preset=crowed"])
    cfg = load_config(None, ["data.annotation.kind=fmnist_scenes", "data.annotation.scenes.preset=crowded",
                             "data.annotation.scenes.num_scenes=30", "data.annotation.scenes.background=plaid"])
    assert cfg.data.annotation.scenes.background == "plaid" and cfg.data.annotation.scenes.canvas is None


@pytest.mark.parametrize("background", ["grating", "plaid"])
def test_a_background_is_shared_by_the_scene_and_says_nothing_about_its_items(background):
    cfg = SceneGeneratorOptions(preset="crowded", background=background, num_scenes=40)
    images, labels = random_pool()
    scenes = generate_scenes(images, labels, cfg, "train")
    relabelled = generate_scenes(255 - images, (labels + 3) % 10, cfg, "train")  # other items, other classes
    outside = torch.ones_like(scenes.images, dtype=torch.bool)
    for scene, box in zip(scenes.item_scene.tolist(), (scenes.item_boxes * 64).round().long().tolist()):
        outside[scene, 0, box[1]:box[3], box[0]:box[2]] = False
    assert torch.equal(scenes.images[outside], relabelled.images[outside])  # the same backgrounds
    per_scene = [scenes.images[i][outside[i]].float() for i in range(40)]
    assert all(values.std() > 5 for values in per_scene)  # a pattern, not a flat grey
    assert len({round(float(values.mean()), 1) for values in per_scene}) > 30  # each scene its own
    another_seed = generate_scenes(images, labels, SceneGeneratorOptions(**{**cfg.__dict__, "seed": 1}), "train")
    assert not torch.equal(scenes.images, another_seed.images)


def test_single_item_canvases_stay_on_black_under_a_background_setting():
    cfg = SceneGeneratorOptions(preset="crowded", single_fraction=1.0, num_scenes=20)
    images, labels = random_pool()
    images[:, :7] = 0  # every item's top quarter is black: the canvas shows there
    scenes = generate_scenes(images, labels, cfg, "train")
    assert int(scenes.images[:, 0, :8].max()) == 0


@pytest.mark.parametrize("option, value", [("background", "stripes"), ("background_level", "[0.5, 0.2]"),
                                           ("background_contrast", "[0.1, 1.5]"), ("background_period", "[1.0, 4.0]")])
def test_a_bad_background_option_names_its_key(option, value):
    with pytest.raises(AnnobootError, match=f"data.annotation.scenes.{option}"):
        load_config(None, ["data.annotation.kind=fmnist_scenes", f"data.annotation.scenes.{option}={value}"])


@settings(max_examples=40, deadline=None)
@given(
    canvas=st.integers(24, 72),
    items=st.tuples(st.integers(1, 6), st.integers(0, 3)),
    item_size=st.tuples(st.integers(4, 16), st.integers(0, 8)),
    background=st.sampled_from(["none", "grating", "plaid"]),
    level=st.tuples(st.floats(0, 1), st.floats(0, 1)).map(sorted),
    period=st.tuples(st.floats(2, 30), st.floats(2, 30)).map(sorted),
    single_fraction=st.floats(0, 1),
    seed=st.integers(0, 2**31),
)
def test_any_valid_scene_setting_gives_deterministic_scenes_whose_boxes_fit(canvas, items, item_size, background, level,
                                                                             period, single_fraction, seed):
    cfg = SceneGeneratorOptions(preset="crowded", num_scenes=12, canvas=canvas, items=[items[0], items[0] + items[1]],
                       item_size=[item_size[0], min(canvas, item_size[0] + item_size[1])], background=background,
                       background_level=list(level), background_period=list(period), single_fraction=single_fraction,
                       seed=seed)
    images, labels = random_pool(60, seed=seed % 7)
    scenes = generate_scenes(images, labels, cfg, "test")
    again = generate_scenes(images, labels, cfg, "test", num_scenes=5)
    assert scenes.images.shape == (12, 1, canvas, canvas)
    assert torch.equal(scenes.images[:5], again.images) and scenes.captions[:5] == again.captions
    counts = torch.bincount(scenes.item_scene, minlength=12)
    assert bool(((counts >= 1) & (counts <= cfg.items[1])).all())
    sides = (scenes.item_boxes[:, 2:] - scenes.item_boxes[:, :2]) * canvas
    assert bool((scenes.item_boxes >= 0).all() and (scenes.item_boxes <= 1).all())
    assert bool(((sides.round() >= cfg.item_size[0]) | (sides.round() == canvas)).all())  # a single item fills the canvas
    assert torch.equal(scenes.item_labels, labels[scenes.item_indices])

"""coco_boxes: photos with a COCO instances file as boxed scenes, the probes in context on them.

The reference is the generated scenes: written out as a COCO export (PNG files and an instances
JSON), they must come back with the same pixels, boxes and classes, and the probes in context
must read them as they read the scenes themselves.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import NORMALIZE, PatchCentreClass, flat_scenes, one_thread  # noqa: F401  (one_thread: an autouse fixture)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from annoboot.config import EvalConfig, SourceConfig
from annoboot.data import build_source
from annoboot.data.coco_boxes import CocoBoxSource, canvas_boxes, letterbox, read_coco_instances
from annoboot.data.scenes import SceneSource
from annoboot.errors import AnnobootError
from annoboot.eval.in_context import in_context_features

CLASSES = [str(c) for c in range(10)]


def export_coco(scenes: SceneSource, root: Path, pad_right: int = 0, pad_bottom: int = 0, ids=int) -> Path:
    """Write ``scenes`` as a COCO export under ``root``: RGB PNGs (each scene at the top left of
    a black image ``pad_right`` / ``pad_bottom`` pixels larger) and instances.json, categories
    listed in reverse order with ids 100 + class (the source must sort them by id)."""
    root.mkdir(parents=True, exist_ok=True)
    side = scenes.in_memory().shape[-1]
    width, height = side + pad_right, side + pad_bottom
    images, annotations = [], []
    flat = scenes.scenes
    for index in range(len(scenes)):
        pixels = np.zeros((height, width, 3), dtype=np.uint8)
        pixels[:side, :side] = scenes[index][0].numpy()[..., None]
        Image.fromarray(pixels).save(root / f"scene{index:03d}.png")
        images.append({"id": ids(index), "file_name": f"scene{index:03d}.png", "width": width, "height": height})
    for row in range(flat.item_labels.numel()):
        x0, y0, x1, y1 = (flat.item_boxes[row] * side).tolist()
        annotations.append({"id": row, "image_id": ids(int(flat.item_scene[row])), "category_id": 100 + int(flat.item_labels[row]),
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    categories = [{"id": 100 + c, "name": CLASSES[c]} for c in reversed(range(10))]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_a_coco_export_of_generated_scenes_comes_back_with_the_same_pixels_boxes_and_classes(tmp_path):
    scenes = flat_scenes("test", 12)
    path = export_coco(scenes, tmp_path / "val")
    coco = CocoBoxSource(str(tmp_path / "val"), str(path), scene_side=64)
    assert coco.class_names == CLASSES and len(coco) == len(scenes)
    assert torch.equal(coco.in_memory(), scenes.in_memory().expand(-1, 3, -1, -1))
    assert torch.equal(coco.scenes.item_scene, scenes.scenes.item_scene)
    assert torch.equal(coco.scenes.item_labels, scenes.scenes.item_labels)
    assert torch.allclose(coco.scenes.item_boxes, scenes.scenes.item_boxes, atol=1e-6)
    assert torch.equal(coco.labels, scenes.labels) and torch.equal(coco.multi_hot(), scenes.multi_hot())
    assert coco.skipped == {}


@pytest.mark.parametrize("pad_right,pad_bottom", [(32, 0), (0, 32)])
def test_the_probe_in_context_reads_every_object_of_letterboxed_photos_exactly(tmp_path, pad_right, pad_bottom):
    # Non-square photos (96 x 64, 64 x 96) letterboxed at their own scale: the hand-made
    # encoder's tokens carry the class under their centre, so a box pools its own object's class
    # and nothing else only where the boxes were moved with the pixels.
    scenes = flat_scenes("test", 20)
    path = export_coco(scenes, tmp_path / "val", pad_right, pad_bottom, ids=lambda i: f"img-{i}")
    coco = CocoBoxSource(str(tmp_path / "val"), str(path), scene_side=96)
    assert coco.in_memory().shape[1:] == (3, 96, 96)
    features = in_context_features(PatchCentreClass(), coco, NORMALIZE, batch_size=8)
    assert torch.equal(features.pooled.argmax(1), features.labels)
    assert torch.allclose(features.pooled.max(1).values, torch.ones(len(features)))


def test_upscaled_photos_keep_their_boxes_on_their_objects(tmp_path):
    # 64 x 128 photos onto a 256 canvas (twice the scale): resampling blurs the objects' edges,
    # so a token at an edge may read a blend, but boxes that missed their objects would read
    # another place (a mirrored box reads the right class for under half of the objects).
    scenes = flat_scenes("test", 20)
    path = export_coco(scenes, tmp_path / "val", pad_bottom=64)
    coco = CocoBoxSource(str(tmp_path / "val"), str(path), scene_side=256)
    features = in_context_features(PatchCentreClass(), coco, NORMALIZE, batch_size=8)
    assert (features.pooled.argmax(1) == features.labels).float().mean() >= 0.95
    coco.scenes.item_boxes[:, [0, 2]] = 0.5 - coco.scenes.item_boxes[:, [2, 0]]  # mirrored within the photo
    mirrored = in_context_features(PatchCentreClass(), coco, NORMALIZE, batch_size=8)
    assert (mirrored.pooled.argmax(1) == mirrored.labels).float().mean() < 0.5


def test_annoboot_eval_runs_the_probes_in_context_on_a_coco_export(tmp_path):
    from annoboot.commands import evaluate_encoder
    from annoboot.config import Config

    train_path = export_coco(flat_scenes("train", 60), tmp_path / "train", pad_right=16)
    test_path = export_coco(flat_scenes("test", 30), tmp_path / "val", pad_right=16)
    cfg = Config()
    cfg.views.mean, cfg.views.std = [0.5] * 3, [0.5] * 3
    cfg.eval = EvalConfig(probes=["knn", "linear"], knn_k=5, linear_epochs=30, linear_lrs=[1e-1], batch_size=16,
                          train=SourceConfig(kind="coco_boxes", root=str(tmp_path / "train"), annotations=str(train_path), scene_side=80),
                          test=SourceConfig(kind="coco_boxes", root=str(tmp_path / "val"), annotations=str(test_path), scene_side=80))
    results = evaluate_encoder(PatchCentreClass(), cfg, torch.device("cpu"))
    in_context = results["scene_probes"]["in_context"]
    assert in_context["knn"] == 100.0 and in_context["linear"] == 100.0
    assert in_context["context"]["resolution"] == 80
    assert set(results["scene_probes"]) == {"in_context", "scenes_in_context"}


def test_train_and_test_files_that_name_different_classes_are_refused_naming_both(tmp_path):
    from annoboot.commands import check_scene_pair

    train_path = export_coco(flat_scenes("train", 4), tmp_path / "train")
    test_path = export_coco(flat_scenes("test", 4), tmp_path / "val")
    data = json.loads(test_path.read_text())
    data["categories"][0]["name"] = "sandal"  # id 109
    test_path.write_text(json.dumps(data))
    train = CocoBoxSource(str(tmp_path / "train"), str(train_path), 64)
    test = CocoBoxSource(str(tmp_path / "val"), str(test_path), 64)
    with pytest.raises(AnnobootError, match=r"coco_boxes/instances.json.*class 9 is '9' in one and 'sandal'"):
        check_scene_pair(train, test, ["in_context"])
    with pytest.raises(AnnobootError, match="family 'items'.*fmnist_scenes"):
        check_scene_pair(train, train, ["in_context", "items"])


def test_unusable_images_and_boxes_are_skipped_and_counted_and_none_usable_is_an_error(tmp_path):
    scenes = flat_scenes("test", 6)
    path = export_coco(scenes, tmp_path / "val")
    (tmp_path / "val" / "scene001.png").unlink()
    (tmp_path / "val" / "scene002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    data = json.loads(path.read_text())
    data["images"][3]["width"] = 128  # the file says 128 x 64: the photo is 64 x 64
    first_of_4 = next(a for a in data["annotations"] if a["image_id"] == 4)
    first_of_4["bbox"] = [70.0, 0.0, 5.0, 5.0]  # right of the 64-px image
    crowd = next(a for a in data["annotations"] if a["image_id"] == 5)
    crowd["iscrowd"] = 1
    path.write_text(json.dumps(data))
    coco = CocoBoxSource(str(tmp_path / "val"), str(path), 64)
    assert len(coco) == 3  # scenes 0, 4 and 5
    assert coco.skipped == {"image file missing": 1, "image not an image": 1, "crowd region": 1, "box outside its image": 1,
                            "image whose aspect differs from its width and height in the file": 1}
    expected = sum(int((scenes.scenes.item_scene == s).sum()) for s in (0, 4, 5)) - 2  # less the crowd and the outside box
    assert coco.scenes.item_labels.numel() == expected
    for name in ("scene000.png", "scene003.png", "scene004.png", "scene005.png"):
        (tmp_path / "val" / name).unlink()
    with pytest.raises(AnnobootError, match=r"instances.json: no image of 6 could be used") as refused:
        CocoBoxSource(str(tmp_path / "val"), str(path), 64)
    # Each reason names its count after it, so a count never reads as part of the reason.
    assert "image file missing: 5; crowd region: 1; image not an image: 1)" in str(refused.value)


def test_the_kind_needs_its_folder_and_file_and_names_what_is_missing(tmp_path):
    with pytest.raises(AnnobootError, match="coco_boxes needs root=.*annotations="):
        build_source(SourceConfig(kind="coco_boxes", root=str(tmp_path)))
    with pytest.raises(AnnobootError, match=f"{tmp_path / 'nope.json'}: no such file"):
        build_source(SourceConfig(kind="coco_boxes", root=str(tmp_path), annotations=str(tmp_path / "nope.json")))
    with pytest.raises(AnnobootError, match="not a folder of images"):
        build_source(SourceConfig(kind="coco_boxes", root=str(tmp_path / "none"), annotations=str(tmp_path / "a.json")))


# --- the space of inputs ---------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(height=st.integers(4, 300), width=st.integers(4, 300), side=st.integers(16, 160),
       box=st.tuples(*[st.floats(0.0, 1.0)] * 4))
def test_a_letterboxed_box_covers_the_same_pixels_as_in_the_photo(height, width, side, box):
    # A photo black but for one white rectangle, and that rectangle as its box: on the canvas,
    # the box holds the white and nothing outside it is white (a pixel's margin for resampling).
    fx0, fx1 = sorted(box[::2])
    fy0, fy1 = sorted(box[1::2])
    x0, x1 = int(fx0 * width), max(int(fx1 * width), int(fx0 * width) + 1)
    y0, y1 = int(fy0 * height), max(int(fy0 * height) + 1, int(fy1 * height))
    x1, y1 = min(x1, width), min(y1, height)
    x0, y0 = min(x0, x1 - 1), min(y0, y1 - 1)
    photo = torch.zeros((3, height, width), dtype=torch.uint8)
    photo[:, y0:y1, x0:x1] = 255
    canvas, cover = letterbox(photo, side)
    (placed,), kept = canvas_boxes([(x0, y0, x1, y1)], (width, height), cover)
    assert kept == [0] and canvas.shape == (3, side, side)
    bx0, by0, bx1, by1 = (v * side for v in placed)
    ys, xs = torch.nonzero(canvas[0] > 0, as_tuple=True)
    scale = side / max(height, width)
    if (x1 - x0) * scale >= 1 and (y1 - y0) * scale >= 1:  # at least a canvas pixel: it shows
        assert len(ys) > 0
    if len(ys) == 0:
        return
    margin = 1.5 + scale  # the bilinear filter's reach (a canvas pixel shrinking, an input one growing) and half a pixel
    assert xs.min() >= bx0 - margin and xs.max() + 1 <= bx1 + margin
    assert ys.min() >= by0 - margin and ys.max() + 1 <= by1 + margin
    assert cover[0] * side == pytest.approx(max(1, round(width * scale)), abs=1e-6)
    assert cover[1] * side == pytest.approx(max(1, round(height * scale)), abs=1e-6)


def _valid_instances():
    return {"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8},
                       {"id": 2, "file_name": "b.png"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4]},
                            {"id": 2, "image_id": 2, "category_id": 7, "bbox": [0, 0, 8, 8], "iscrowd": 0}],
            "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-5, 10) | st.floats(allow_nan=True) | st.text(max_size=4),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                           max_leaves=6)


@st.composite
def damaged_instances(draw):
    """A valid instances dict with one place, at any depth, replaced by any JSON value or deleted."""
    data = _valid_instances()
    node, path = data, []
    while isinstance(node, (dict, list)) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else list(range(len(node)))))
        path.append(key)
        node = node[key]
    if not path:
        return draw(JSON_VALUES)
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(JSON_VALUES)
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=damaged_instances())
def test_a_damaged_instances_file_reads_or_is_refused_naming_the_file(tmp_path, data):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    try:
        images, class_names, _ = read_coco_instances(str(path))
    except AnnobootError as exc:
        assert str(path) in str(exc)
        return
    assert all(isinstance(name, str) for name in class_names) and class_names
    for image in images:
        assert len(image.boxes) == len(image.labels)
        assert all(0 <= label < len(class_names) for label in image.labels)
        assert all(math.isfinite(v) and x1 > x0 and y1 > y0 for x0, y0, x1, y1 in image.boxes for v in (x0, y0, x1, y1))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 400))
def test_a_truncated_instances_file_is_refused_naming_the_file(tmp_path, cut):
    text = json.dumps(_valid_instances())
    path = tmp_path / "instances.json"
    path.write_text(text[: min(cut, len(text) - 1)])
    with pytest.raises(AnnobootError, match=f"{path}: not JSON"):
        read_coco_instances(str(path))

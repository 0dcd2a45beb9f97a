"""annoboot.viz.value_map and the `viz` command: value maps over a grid of moves, for every AB
method and for scenes."""

import json

import numpy as np
import pytest
import torch
from helpers import SCENES, TINY, TINY_TEXT, needs_fmnist
from matplotlib.image import imread

from annoboot.cli import main
from annoboot.config import to_dict
from annoboot.data import build_source
from annoboot.data.scenes import SceneSource
from annoboot.errors import AnnobootError
from annoboot.methods import build_method
from annoboot.recipe import load_config
from annoboot.commands import load_run, pretrain
from annoboot.train.checkpoint import save_checkpoint
from annoboot.views import render_full_images
from annoboot.viz import annotation_keys, compute_value_map, grid_boxes, load_image, value_probabilities

SMALL = ["train.batch_size=32", "data.annotation.limit=500", "eval.test.limit=200"]


def assert_png(path):
    assert path.is_file() and path.stat().st_size > 0
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50


@pytest.fixture(scope="module")
def ab_simclr_run(tmp_path_factory):
    """A tiny ABSimCLR run on Fashion-MNIST: 4 steps, metrics logged every 2."""
    run = tmp_path_factory.mktemp("ab_simclr") / "run"
    cfg = load_config(None, TINY + SMALL + ["method.name=ab_simclr", "train.steps=4", "train.log_every=2", f"train.out_dir={run}"])
    pretrain(cfg)
    return run


@needs_fmnist
def test_value_map_is_a_probability_map_over_the_grid(ab_simclr_run):
    cfg, method, device = load_run(ab_simclr_run)
    source = build_source(cfg.eval.test)
    image = load_image(source, 0, device)
    vmap = compute_value_map(method, source, image, grid=5)
    assert vmap.grid.shape == (5, 5)
    assert np.all((vmap.grid >= 0) & (vmap.grid <= 1))
    # One Fashion-MNIST test image per class is the annotation set; the viewed image's class is shown.
    assert vmap.probs.shape == (5, 5, 10)
    assert vmap.annotations.names[vmap.chosen] == source.class_names[int(source.labels[0])]
    torch.testing.assert_close(vmap.probs.sum(-1), torch.ones(5, 5))
    # The map depends on the move: the action tokens change the prediction from box to box.
    assert vmap.probs.std(dim=(0, 1)).max() > 1e-5
    other = compute_value_map(method, source, image, vmap.chosen, grid=5, box_scale=0.9)
    assert not torch.allclose(other.probs, vmap.probs)


@needs_fmnist
@pytest.mark.parametrize("target_box", [False, True])
def test_value_map_scores_moves_as_training_does(ab_simclr_run, target_box):
    """The grid's probabilities equal ValueFunction.logits on (whole image, box) view pairs, source 0 -> target 1;
    with model.decoder_attention=target_box too: each move then reads only its box's tokens, in the
    map as in training. Caught break: value maps calling the decoder without the run's mask."""
    cfg, method, device = load_run(ab_simclr_run)
    method.value_function.attend_to_target = target_box  # the same weights, read as a target_box run reads them
    source = build_source(cfg.eval.test)
    image = load_image(source, 1, device)
    keys = annotation_keys(method, source, image).keys
    boxes = grid_boxes(3, 0.4).view(-1, 4)
    probs = value_probabilities(method, image.batch, keys, boxes)  # (9, L)

    pairs = torch.stack([torch.tensor([0.0, 0.0, 1.0, 1.0]).expand_as(boxes), boxes], dim=1)  # (9, 2, 4)
    with torch.no_grad():
        tokens = method.encoder(render_full_images(image.batch, cfg.views.img_size, method.normalize)).tokens
        vf = method.value_function
        logits = vf.logits(tokens.expand(9 * 2, -1, -1), vf.moves(pairs), keys)  # (9, 2, 2, L)
    torch.testing.assert_close(probs, torch.softmax(logits[:, 0, 1].float(), -1), atol=1e-5, rtol=1e-4)


@needs_fmnist
def test_viz_command_writes_the_pictures(ab_simclr_run, tmp_path, capsys):
    out = tmp_path / "viz"
    assert main(["viz", str(ab_simclr_run), "--out", str(out), "--grid", "4", "--image-index", "2", "--weights", "ema"]) == 0
    printed = capsys.readouterr().out
    for name in ("curves.png", "agreement.png", "value_map.png"):
        assert_png(out / name)
        assert str(out / name) in printed
    grid = np.load(out / "value_map.npy")
    assert grid.shape == (4, 4) and np.all((grid >= 0) & (grid <= 1))
    meta = json.loads((out / "value_map.json").read_text())
    assert meta["image_index"] == 2 and meta["weights"] == "ema" and len(meta["annotations"]) == 10
    assert np.allclose(meta["probability"], grid)

    assert main(["viz", str(ab_simclr_run), "--out", str(out), "--annotation", "10"]) == 2
    assert "--annotation 10" in capsys.readouterr().err
    assert main(["viz", str(ab_simclr_run), "--out", str(out), "--image-index", "200"]) == 2
    assert "--image-index 200" in capsys.readouterr().err


def test_viz_of_a_run_without_value_function_says_value_maps_need_ab(tmp_path, capsys):
    run = tmp_path / "simclr"
    cfg = load_config(None, TINY + ["method.name=simclr", f"train.out_dir={run}"])
    save_checkpoint(run, 0, {"config": to_dict(cfg), "method": build_method(cfg).state_dict()})
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss/total": 5.0, "loss/simclr": 5.0}) + "\n")

    assert main(["viz", str(run), "--out", str(tmp_path / "viz")]) == 2
    err = capsys.readouterr().err
    assert err.count("annoboot: error:") == 1 and "value maps need an ab_* run" in err and "simclr" in err
    assert not (tmp_path / "viz").exists()  # nothing half-written

    assert main(["viz", str(run), "--out", str(tmp_path / "viz"), "--curves-only"]) == 0
    assert_png(tmp_path / "viz" / "curves.png")
    assert not (tmp_path / "viz" / "agreement.png").exists()  # no agreement logged


def test_grid_boxes_tile_or_slide_over_the_image():
    cells = grid_boxes(4, 0.25)
    assert cells.shape == (4, 4, 4)
    torch.testing.assert_close(cells[0, 0], torch.tensor([0.0, 0.0, 0.25, 0.25]))
    torch.testing.assert_close(cells[3, 1], torch.tensor([0.25, 0.75, 0.5, 1.0]))  # row = y, column = x
    sliding = grid_boxes(3, 0.5)
    torch.testing.assert_close(sliding[:, 1, 0], torch.tensor([0.25, 0.25, 0.25]))
    for bad in [(0, 0.5), (3, 0.0), (3, 1.5)]:
        with pytest.raises(AnnobootError, match="--grid|--box-scale"):
            grid_boxes(*bad)


@needs_fmnist
@pytest.mark.parametrize(
    "method_name,extra,size",
    [("ab_dino", ["model.dino_prototypes=64"], 64), ("ab_clip", TINY_TEXT, 10)],
)
def test_other_methods_annotation_sets_give_valid_maps(method_name, extra, size):
    """Untrained ABDINO (prototypes) and ABCLIP (class prompts on Fashion-MNIST): valid maps of the right size."""
    cfg = load_config(None, TINY + SMALL + [f"method.name={method_name}", *extra])
    method = build_method(cfg).eval()
    source = build_source(cfg.eval.test)
    image = load_image(source, 0)
    vmap = compute_value_map(method, source, image, grid=3)
    assert vmap.probs.shape == (3, 3, size)
    torch.testing.assert_close(vmap.probs.sum(-1), torch.ones(3, 3))
    if method_name == "ab_clip":  # the default annotation is the prompt naming the image's class
        assert source.class_names[int(source.labels[0])] in vmap.annotations.texts[vmap.chosen]


@needs_fmnist
def test_value_maps_of_scenes_use_the_scene_items_and_know_their_boxes():
    source = SceneSource(SCENES, "test")
    method = build_method(load_config(None, TINY + ["method.name=ab_simclr"])).eval()
    image = load_image(source, 3)
    annotations = annotation_keys(method, source, image)
    own = source.item_boxes[3]
    assert torch.equal(annotations.true_boxes[: len(own)], own)
    assert torch.isnan(annotations.true_boxes[len(own):]).all()
    largest = int(((own[:, 2] - own[:, 0]) * (own[:, 3] - own[:, 1])).argmax())
    assert annotations.default == largest
    assert annotations.names[0] == source.class_names[int(source.item_labels[3][0])]

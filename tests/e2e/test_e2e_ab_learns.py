"""Each AB method learns beside its base on real data (issue 34, item 4): ABDINO lifts a small
CNN's kNN as DINO does and its bootstrap loss falls; ABCLIP learns Tux Paint retrieval as CLIP
does and its bootstrap loss falls. Margins measured on one thread (tests/conftest.py), written
beside each assertion."""

import json

import pytest
from helpers import DINO_TINY, TINY, TINY_TEXT, knn_of, needs_fmnist, needs_tuxpaint

from annoboot.config import SourceConfig
from annoboot.data import build_source
from annoboot.eval.image_text import embed_images, embed_texts, retrieval_recall
from annoboot.recipe import load_config
from annoboot.train import Trainer
from annoboot.views import Normalize


def logged(run_dir, key):
    return [row[key] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if key in row]


@pytest.mark.slow
@needs_fmnist
def test_abdino_lifts_a_small_cnn_beside_dino(tiny_config):
    # The DINO test's CNN recipe (tests/e2e/test_e2e_dino.py) with the bootstrap branch on a
    # share of the batch.
    cfg = tiny_config("method.name=ab_dino", "model.backbone=test_resnet", "model.backbone_kwargs={}", "train.steps=40",
                      "train.precision=auto", "train.log_every=10", "train.lr=2e-3", "method.freeze_last_layer_steps=5",
                      "method.teacher_temp_warmup_steps=20", "model.decoder_depth=1", *DINO_TINY)
    trainer = Trainer(cfg)
    untrained = knn_of(trainer.method.encoder, cfg)
    trainer.fit()
    trained = knn_of(trainer.method.encoder, cfg)
    # The bootstrap loss is a cross-entropy to the teacher's prototype distributions, whose
    # entropy changes as the teacher sharpens: what Q learns is the KL part, loss - H(targets).
    kl = [loss - entropy for loss, entropy in zip(logged(trainer.run_dir, "loss/bootstrap"),
                                                  logged(trainer.run_dir, "ab/target_entropy"))]
    # Measured 2026-12-05, one thread: kNN 66.4 -> 70.7 (DINO's test: +5.9 at 40 steps), KL
    # 1.12 -> 0.35 over the four logged intervals.
    assert trained > untrained + 2.0, (untrained, trained)
    assert kl[-1] < 0.6 * kl[0], kl


@pytest.mark.slow
@needs_tuxpaint
def test_abclip_learns_tuxpaint_retrieval_beside_clip(tmp_path):
    # The CLIP test's recipe (tests/e2e/test_e2e_clip.py) with the bootstrap branch; CLIP's batch
    # kept whole (as the ABSimCLR e2e test does). Measured: with the published half split, 80
    # steps left retrieval at chance (R@5 2.0, chance 2.5); whole, 80 steps gave 3.5 / 6.0 (CLIP
    # alone passes its 3x chance there) and 160 steps give the figures below.
    cfg = load_config(None, TINY + TINY_TEXT + [
        "data.annotation.kind=tuxpaint", "data.annotation.limit=null", "data.annotation.num_workers=0",
        "method.name=ab_clip", f"train.out_dir={tmp_path / 'run'}", "train.steps=160", "train.log_every=10",
        "train.lr=1e-3", "eval.at_end=false", "model.decoder_depth=1",
        "method.action_range=12", "method.annotation_fraction=1.0", "method.bootstrap_fraction=0.125"])  # Tux Paint stamps are not square: moves reach past the default 6
    trainer = Trainer(cfg)
    trainer.fit()
    losses, boot = logged(trainer.run_dir, "loss/clip"), logged(trainer.run_dir, "loss/bootstrap")
    source = build_source(SourceConfig(kind="tuxpaint", split="train", limit=200))
    method = trainer.method
    images, _, captions = embed_images(method, source, cfg.views.img_size, Normalize(cfg.views.mean, cfg.views.std),
                                       trainer.device)
    recall = retrieval_recall(images, embed_texts(method, captions, trainer.device))
    chance_r5 = 100 * 5 / len(captions)
    # Measured 2026-12-05, one thread, 160 steps: CLIP loss 4.39 -> 1.85, bootstrap loss 4.28 ->
    # about 3.2, R@5 image->text 60.5 and text->image 64.0 among 200 pairs (chance 2.5).
    assert losses[-1] < losses[0] - 1.0, losses
    assert boot[-1] < boot[0] - 0.3, boot
    assert recall["image_to_text_r5"] > 8 * chance_r5 and recall["text_to_image_r5"] > 8 * chance_r5, recall

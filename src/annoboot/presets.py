"""Small settings for smoke runs, in one place: the benchmarks' ``--quick`` budget and the tests'
tiny model. Each is a list of ``key=value`` overrides applied on top of a recipe.

The quick encoder is the CPU recipes' (ViT-Tiny with 8-px patches at 32 px: 16 tokens) at 4
blocks; the tests' tiny model is the same encoder at 2 blocks with narrower heads, so a test
runs the shape a quick benchmark trains, in seconds.
"""

from __future__ import annotations

from typing import List


def small_vit(depth: int) -> str:
    """ViT-Tiny (width 192) with 8-px patches and ``depth`` blocks."""
    return f"model.backbone_kwargs={{patch_size: 8, depth: {depth}}}"


# --quick of every benchmark: these blocks, plus what its protocol needs (benchmarks/_harness.py).
QUICK_MODEL = [small_vit(4), "model.decoder_depth=2"]
QUICK_TRAIN = ["train.batch_size=128", "train.steps=300", "train.warmup_steps=30"]
QUICK_WEIGHT_DECAY = ["train.weight_decay=0.05", "train.weight_decay_end=0.05"]
QUICK_EVAL = ["eval.linear_epochs=20", "eval.map_epochs=5"]
QUICK_TEXT = ["model.text_width=128", "model.text_depth=2", "model.text_heads=2", "model.embed_dim=128"]
# --quick training on a captioned set (Open Clip Art, Tux Paint): benchmarks/captioned_probes.py
# trains it, benchmarks/throughput.py --clip-data openclipart times its step.
QUICK_CAPTIONED = [*QUICK_MODEL, "views.img_size=32", *QUICK_TEXT, *QUICK_TRAIN, "train.lr=1e-3"]
QUICK_DINO = [
    "views.local_size=16",
    "model.dino_hidden_dim=512",
    "model.dino_prototypes=1024",
    "method.teacher_temp_warmup_steps=100",
    "method.freeze_last_layer_steps=30",
]

# The tests' tiny model: 2 blocks, batch 64, small probe sets. float32: bf16 on a CPU costs each
# new set of shapes about 2 s of kernel set-up, which short runs never earn back; the tests that
# train for many steps run at the default precision (bf16 where native).
TINY: List[str] = [
    "train.precision=fp32",
    "model.backbone=vit_tiny_patch16_224",
    small_vit(2),
    "model.decoder_depth=1",
    "model.proj_hidden_dim=256",
    "train.device=cpu",
    "train.progress=false",
    "train.warmup_steps=5",
    *QUICK_WEIGHT_DECAY,
    "train.batch_size=64",
    "data.annotation.limit=4000",
    "eval.train.limit=4000",
    "eval.test.limit=1000",
    "eval.at_end=false",
]
# A text tower small enough for CPU tests (clip, ab_clip).
TINY_TEXT = ["model.text_width=64", "model.text_depth=2", "model.text_heads=2", "model.embed_dim=64", "model.context_length=24"]
# A DINO small enough for CPU: a narrow head, 256 prototypes, 2 local crops, no colour jitter
# (kornia's hue jitter alone costs more than the model on CPU).
DINO_TINY = [
    "model.dino_hidden_dim=256",
    "model.dino_bottleneck_dim=64",
    "model.dino_prototypes=256",
    "views.local_views=2",
    "views.jitter_prob=0",
]

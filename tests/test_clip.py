"""CLIP and ABCLIP: loss, tokenizer, text tower, captioned sources, shards, a real-data run."""

import io
import math
import os
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import TINY, TINY_TEXT, TUXPAINT_ROOT, needs_fmnist, needs_openclipart, needs_tuxpaint

from annoboot.batch import ImageBatch
from annoboot.config import SourceConfig, load_config
from annoboot.data import BatchStream, build_source, build_stream
from annoboot.data.base import InMemoryImageSource
from annoboot.data.captioned import captioned_folder, openclipart, split_of, tuxpaint
from annoboot.data.shards import ShardStream
from annoboot.errors import AnnobootError
from annoboot.eval.image_text import retrieval_recall, zero_shot_accuracy
from annoboot.methods import ABCLIP, build_method
from annoboot.models import CaptionTokenizer, TextEncoder
from annoboot.objectives import caption_distribution, clip_loss

CLIP_TINY = TINY + TINY_TEXT + ["data.annotation.kind=tuxpaint", "data.annotation.limit=null", "data.annotation.num_workers=0"]


# ------------------------------------------------------------------------------- objectives
def test_clip_loss_matches_a_hand_computed_case():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # s * I T^T = [[2, 1.2], [0, 1.6]]; s * T I^T = [[2, 0], [1.2, 1.6]] with s = 2.
    image_rows = (math.log1p(math.exp(-0.8)) + math.log1p(math.exp(-1.6))) / 2
    text_rows = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-0.4))) / 2
    expected = (image_rows + text_rows) / 2
    assert clip_loss(images * 3, texts, 2.0).item() == pytest.approx(expected, rel=1e-6)  # scale-free in the inputs


def test_caption_distribution_is_the_scaled_softmax_over_captions():
    views, captions = torch.randn(5, 8), torch.randn(3, 8)
    p = caption_distribution(views, captions, 10.0)
    assert p.shape == (5, 3)
    assert torch.allclose(p.sum(-1), torch.ones(5))
    cos = torch.nn.functional.normalize(views, dim=-1) @ torch.nn.functional.normalize(captions, dim=-1).T
    assert torch.allclose(p, torch.softmax(10 * cos, -1), atol=1e-6)


# --------------------------------------------------------------------------- text side
def test_tokenizer_round_trip_and_truncation():
    tok = CaptionTokenizer(context_length=8)
    ids = tok(["A Sumatran tiger.", "one two three four five six seven eight nine", ""])
    assert ids.shape == (3, 8) and ids.dtype == torch.int64
    assert tok.decode(ids[:1]) == ["a sumatran tiger ."]
    assert ids[0, 0] == tok.start_id and (ids[0] == tok.end_id).sum() == 1
    # A long caption is cut to the context and still ends with the end-of-text token.
    assert ids[1, -1] == tok.end_id and tok.decode(ids[1:2]) == ["one two three four five six"]
    assert ids[2, :2].tolist() == [tok.start_id, tok.end_id] and ids[2, 2:].eq(0).all()
    with pytest.raises(TypeError):
        tok("a single string")
    with pytest.raises(AnnobootError, match="context_length"):
        CaptionTokenizer(context_length=2)


def test_text_encoder_reads_the_end_token_and_is_causal():
    torch.manual_seed(0)
    tok = CaptionTokenizer(context_length=12)
    enc = TextEncoder(tok.vocab_size, 12, width=32, depth=2, heads=4, end_id=tok.end_id).eval()
    ids = tok(["a red sneaker", "a red sneaker on a table"])
    out = enc(ids)
    assert out.shape == (2, 32)
    # The first caption's feature ignores whatever follows its end token (padding or not).
    changed = ids.clone()
    changed[0, 6:] = 1234
    assert torch.allclose(enc(changed)[0], out[0], atol=1e-5)
    # The two captions share a prefix but end differently: different features.
    assert not torch.allclose(out[0], out[1], atol=1e-3)


# --------------------------------------------------------------------- captioned sources
def _png_bytes(color, size=(12, 10)):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_captioned_folder_pairs_images_with_txt_twins_and_leaves_out_the_rest(tmp_path):
    for category in ("cats", "dogs"):
        (tmp_path / category).mkdir()
        for i in range(20):
            (tmp_path / category / f"{i}.png").write_bytes(_png_bytes((i * 10, 0, 0)))
            if i != 3:  # one image per category without a caption
                (tmp_path / category / f"{i}.txt").write_text(f"\n  a {category[:-1]} number {i}  \nsecond line\n")
    source = captioned_folder(str(tmp_path), split="all")
    assert len(source) == 38 and source.class_names == ["cats", "dogs"]
    i = source.paths.index(str(tmp_path / "dogs" / "7.png"))
    assert source.captions[i] == "a dog number 7" and source.labels[i] == 1
    assert source[i].shape == (3, 10, 12)
    train, test = captioned_folder(str(tmp_path), split="train"), captioned_folder(str(tmp_path), split="test")
    assert len(train) + len(test) == 38 and not set(train.paths) & set(test.paths)
    assert all(split_of(Path(p).relative_to(tmp_path).as_posix()) == "test" for p in test.paths)
    with pytest.raises(AnnobootError, match="split"):
        captioned_folder(str(tmp_path), split="val")


@needs_tuxpaint
def test_tuxpaint_captions_are_english_sentences_with_shared_class_ids():
    train, test = tuxpaint(split="train"), tuxpaint(split="test")
    assert len(train) > 500 and len(test) > 40
    assert train.class_names == test.class_names  # ids agree between splits
    assert all(c and "utf8=" not in c for c in train.captions)
    assert sum(c.endswith(".") for c in train.captions) > 0.8 * len(train)
    assert train[0].dtype == torch.uint8 and train[0].shape[0] == 3


@needs_openclipart
def test_openclipart_captions_use_titles_not_authors_or_collections():
    source = openclipart(split="all")
    assert len(source) > 6000 and len(source.class_names) == 22
    assert all(source.captions)
    assert not any(c.startswith("Open Clip Art Library") for c in source.captions)
    i = next(i for i, p in enumerate(source.paths) if p.endswith("science/provetta_plasma_sangue_a_01.png"))
    assert source.captions[i].startswith("Provetta plasma sangue")  # the title, not the author's name
    assert "gramastar" not in source.captions  # a collection's shared title is replaced by the file's words


def test_missing_package_error_names_the_path_and_the_install_command(tmp_path):
    with pytest.raises(AnnobootError, match="apt-get install .*tuxpaint-stamps-default"):
        build_source(SourceConfig(kind="tuxpaint", root=str(tmp_path / "nowhere")))


# ------------------------------------------------------------------------------ streams
def _write_shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_shard_samples_without_caption_or_image_are_skipped_and_counted(tmp_path):
    good = [(f"g{i}", {"png": _png_bytes((i, 50, 0)), "txt": f"a shape number {i}".encode()}) for i in range(12)]
    no_caption = [("nocap", {"png": _png_bytes((1, 2, 3))}), ("empty", {"png": _png_bytes((1, 2, 3)), "txt": b"  \n"})]
    broken = [("broken", {"png": b"\x89PNG not really", "txt": b"a broken file"})]
    _write_shard(tmp_path / "s-0.tar", good + no_caption + broken)
    stream = ShardStream(str(tmp_path / "s-0.tar"), batch_size=4, seed=0, num_workers=0, shuffle_buffer=1, require_captions=True)
    batches = [next(stream) for _ in range(12)]
    assert all(b.captions is not None and all(c.startswith("a shape number") for c in b.captions) for b in batches)
    assert all(len(b.captions) == len(b) for b in batches)
    assert stream.skipped > 0  # 3 of every 15 resampled samples are unusable: counted, never fatal
    captionless = ShardStream(str(tmp_path / "s-0.tar"), batch_size=4, seed=0, num_workers=0, shuffle_buffer=1)
    assert any("" in next(captionless).captions for _ in range(12))  # kept, with an empty caption


class _TokenizerCountingMainProcessCalls:
    """The CLIP tokenizer, counting the calls made in the process that built it (the training
    process); each loader worker runs its own copy, whose count stays in the worker."""

    def __init__(self, context_length: int = 16):
        self.tokenizer = CaptionTokenizer(context_length)
        self.main_pid = os.getpid()
        self.main_process_calls = 0

    def __call__(self, captions):
        self.main_process_calls += os.getpid() == self.main_pid
        return self.tokenizer(captions)


class _CaptionedImagesInMemory(InMemoryImageSource):
    def __init__(self, captions):
        self._images = torch.zeros(len(captions), 3, 8, 8, dtype=torch.uint8)
        self.captions = captions


@pytest.mark.parametrize("served_from", ["workers", "files_without_workers", "memory"])
def test_batch_streams_tokenise_captions_off_the_training_thread(tmp_path, served_from):
    # Tokenising took the training thread ~60 ms per 512 captions every step. Decode workers
    # tokenise now; a stream without workers tokenises the source's captions once, up front.
    captions = [f"a red square number {i}" for i in range(12)]
    if served_from == "memory":
        source = _CaptionedImagesInMemory(captions)
    else:
        for i, caption in enumerate(captions):
            (tmp_path / f"{i}.png").write_bytes(_png_bytes((i * 10, 0, 0), size=(12 + i, 10)))
            (tmp_path / f"{i}.txt").write_text(caption)
        source = captioned_folder(str(tmp_path))
    tokenize = _TokenizerCountingMainProcessCalls()
    workers = 1 if served_from == "workers" else 0
    stream = BatchStream(source, batch_size=4, seed=0, num_workers=workers, tokenize=tokenize)
    calls_up_front = tokenize.main_process_calls
    batches = [next(stream) for _ in range(7)]  # over two epochs
    assert tokenize.main_process_calls == calls_up_front == (0 if served_from == "workers" else 1)
    for batch in batches:
        assert torch.equal(batch.caption_tokens, tokenize.tokenizer(batch.captions))


@pytest.mark.parametrize("decode_on", ["cpu", "device"])
def test_shard_streams_tokenise_captions_in_their_workers(tmp_path, decode_on):
    from PIL import Image

    def jpeg_bytes(color):
        buffer = io.BytesIO()
        Image.new("RGB", (12, 10), color).save(buffer, format="JPEG")
        return buffer.getvalue()

    # JPEGs (decoded by the device path after the workers), PNGs, and a broken file whose
    # caption and tokens must leave the batch together.
    samples = [(f"g{i}", {"jpg" if i % 2 else "png": (jpeg_bytes if i % 2 else _png_bytes)((i * 20, 50, 0)),
                          "txt": f"a shape number {i}".encode()}) for i in range(10)]
    samples.append(("broken", {"jpg": b"\xff\xd8 not really", "txt": b"a broken file"}))
    _write_shard(tmp_path / "s-0.tar", samples)
    tokenize = _TokenizerCountingMainProcessCalls()
    stream = ShardStream(str(tmp_path / "s-0.tar"), batch_size=4, seed=0, num_workers=1, shuffle_buffer=1,
                         require_captions=True, decode_on=decode_on, tokenize=tokenize)
    batches = [next(stream) for _ in range(6)]
    assert tokenize.main_process_calls == 0
    assert stream.skipped > 0
    for batch in batches:
        assert "a broken file" not in batch.captions
        assert torch.equal(batch.caption_tokens, tokenize.tokenizer(batch.captions))


def test_clip_reads_the_tokens_its_stream_made():
    method = build_method(load_config(None, TINY + TINY_TEXT + ["method.name=ab_clip"]))
    assert method.caption_tokenizer("annotation") is method.tokenizer
    assert method.caption_tokenizer("bootstrap") is None  # bootstrap images may be uncaptioned
    tokens = method.tokenizer(["a cat", "a dog"])
    images, sizes = torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.full((2, 2), 8)
    batch = ImageBatch(images, sizes, None, ["a cat", "a dog"], tokens)
    assert method.caption_tokens(batch) is tokens
    assert torch.equal(method.caption_tokens(ImageBatch(batch.images, batch.sizes, None, batch.captions)), tokens)


@needs_fmnist
def test_an_uncaptioned_source_for_a_caption_method_is_a_clear_error():
    with pytest.raises(AnnobootError, match="trains on captions.*fashion_mnist"):
        build_stream(SourceConfig(kind="fashion_mnist", limit=100), 8, 0, "cpu", require_captions=True)


# ------------------------------------------------------------------------------ ABCLIP
@needs_fmnist
def test_abclip_values_range_over_the_annotation_captions(tiny_config, monkeypatch):
    cfg = tiny_config(*TINY_TEXT, "method.name=ab_clip", "train.batch_size=16", "views.bootstrap_views=3")
    method = build_method(cfg)
    target = build_method(cfg)
    target.load_state_dict(method.state_dict())
    seen = {}

    import annoboot.methods.ab_clip as ab_clip_module

    real = ab_clip_module.bootstrap_objective

    def spy(logits, targets, boxes, drop_self_pairs):
        seen["logits"], seen["targets"] = logits.detach(), targets
        return real(logits, targets, boxes, drop_self_pairs)

    monkeypatch.setattr(ab_clip_module, "bootstrap_objective", spy)
    images = torch.randint(0, 255, (10, 1, 28, 28), dtype=torch.uint8)
    sizes = torch.full((10, 2), 28)
    annotation = ImageBatch(images[:8], sizes[:8], captions=[f"caption {i}" for i in range(8)])
    bootstrap = ImageBatch(images[8:], sizes[8:])  # uncaptioned: decoupled training
    out = method.training_step({"annotation": annotation, "bootstrap": bootstrap}, target, 0)
    assert isinstance(method, ABCLIP) and torch.isfinite(out.loss)
    # (bootstrap images, source views, target views, annotation captions)
    assert seen["logits"].shape == (2, 3, 3, 8)
    assert seen["targets"].shape == (2, 3, 8) and torch.allclose(seen["targets"].sum(-1), torch.ones(2, 3))
    out.loss.backward()
    assert method.ab_text_head.net[0].weight.grad is not None  # psi_AB is trained through L_AB
    assert all(p.grad is None for p in target.parameters())


@pytest.mark.slow
@needs_tuxpaint
def test_clip_on_tuxpaint_learns_retrieval_above_chance(tmp_path):
    cfg = load_config(
        None,
        CLIP_TINY
        + [
            "method.name=clip",
            f"train.out_dir={tmp_path / 'run'}",
            "train.steps=80",
            "train.log_every=10",
            "train.lr=1e-3",
            "eval.at_end=false",
        ],
    )
    from annoboot.train.trainer import Trainer

    trainer = Trainer(cfg)
    losses = []
    while trainer.step < cfg.train.steps:
        losses.append(trainer.train_step()["loss/total"].item())
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.3, losses

    from annoboot.eval.image_text import embed_images, embed_texts
    from annoboot.views import Normalize

    # Retrieval among 200 training pairs (the model has seen them; chance R@5 is 2.5%).
    source = build_source(SourceConfig(kind="tuxpaint", split="train", limit=200))
    method = trainer.method
    images, _, captions = embed_images(method, source, cfg.views.img_size, Normalize(cfg.views.mean, cfg.views.std), trainer.device)
    recall = retrieval_recall(images, embed_texts(method, captions, trainer.device))
    chance_r5 = 100 * 5 / len(captions)
    assert recall["image_to_text_r5"] > 3 * chance_r5 and recall["text_to_image_r5"] > 3 * chance_r5, recall


def test_retrieval_and_zero_shot_metrics_on_constructed_embeddings():
    images = torch.eye(4)
    texts = torch.eye(4)[[0, 1, 3, 2]]  # pairs 2 and 3 swapped
    r = retrieval_recall(images, texts, ks=(1, 2))
    assert r["image_to_text_r1"] == 50.0 and r["text_to_image_r1"] == 50.0
    assert r["image_to_text_r2"] == 100.0  # the swapped pairs rank second
    classifier = torch.eye(3)
    assert zero_shot_accuracy(torch.eye(3)[[0, 1, 2, 2]], torch.tensor([0, 1, 2, 0]), classifier) == 75.0


RECIPE_TINY = TINY_TEXT + [
    "model.backbone_kwargs={patch_size: 8, depth: 2}",
    "model.decoder_depth=1",
    "views.img_size=32",
    "train.device=cpu",
    "train.progress=false",
    "train.steps=3",
    "train.batch_size=32",
    "train.warmup_steps=1",
    "data.annotation.num_workers=0",
    "data.annotation.limit=256",
    "eval.train.num_workers=0",
    "eval.test.num_workers=0",
    "eval.train.limit=128",
    "eval.test.limit=64",
    "eval.retrieval.limit=40",
    "eval.probes=[knn]",
]


def test_the_clip_and_abclip_recipes_differ_only_in_the_method():
    clip, ab = (load_config(f"configs/openclipart_{name}.yaml") for name in ("clip", "ab_clip"))
    assert (clip.method.name, ab.method.name) == ("clip", "ab_clip")
    for section in ("data", "model", "train", "eval"):
        a, b = getattr(clip, section), getattr(ab, section)
        differing = [k for k in vars(a) if getattr(a, k) != getattr(b, k) and not k.startswith("decoder") and k != "out_dir"]
        assert not differing, (section, differing)


@needs_openclipart
def test_openclipart_ab_clip_recipe_runs_end_to_end_from_the_cli(tmp_path, capsys):
    import json

    from annoboot.cli import main

    method = "ab_clip"  # the CLIP recipe is the same but for the method (tested above)
    run_dir = tmp_path / method
    code = main(["pretrain", "--config", f"configs/openclipart_{method}.yaml", *RECIPE_TINY, f"train.out_dir={run_dir}"])
    assert code == 0
    results = json.loads((run_dir / "eval.json").read_text())
    assert 0 <= results["zero_shot"] <= 100 and results["zero_shot_chance"] == pytest.approx(100 / 22)
    assert results["retrieval"]["num_pairs"] == 40
    assert "zero-shot" in capsys.readouterr().out


@needs_tuxpaint
@needs_fmnist
def test_abclip_trains_on_caption_shards_with_an_uncaptioned_bootstrap_source(tmp_path):
    from annoboot.cli import main
    from annoboot.train.trainer import Trainer

    assert main(["data", "write-shards", str(TUXPAINT_ROOT), str(tmp_path / "tux-%03d.tar"), "--captions", "tuxpaint",
                 "--max-count", "400"]) == 0
    cfg = load_config(
        None,
        TINY + TINY_TEXT + [
            "method.name=ab_clip",
            "data.annotation.kind=webdataset",
            f"data.annotation.root={tmp_path}/tux-{{000..001}}.tar",
            "data.annotation.num_workers=1",
            "data.bootstrap={kind: fashion_mnist, limit: 1000}",  # decoupled: uncaptioned images
            "train.batch_size=32",
            "train.steps=4",
            f"train.out_dir={tmp_path / 'run'}",
        ],
    )
    trainer = Trainer(cfg)
    metrics = trainer.train_step()
    assert torch.isfinite(metrics["loss/total"]) and "loss/bootstrap" in metrics
    batch = next(trainer.streams["annotation"])
    assert batch.captions is not None and all(batch.captions)
    assert torch.equal(batch.caption_tokens, trainer.method.tokenizer(batch.captions))  # made by the workers
    assert next(trainer.streams["bootstrap"]).captions is None

"""CLIP: the method reads the caption tokens its stream made."""

import torch
from helpers import TINY, TINY_TEXT

from annoboot.batch import ImageBatch
from annoboot.methods import build_method
from annoboot.recipe import load_config


def test_clip_reads_the_tokens_its_stream_made():
    method = build_method(load_config(None, TINY + TINY_TEXT + ["method.name=ab_clip"]))
    assert method.caption_tokenizer("annotation") is method.tokenizer
    assert method.caption_tokenizer("bootstrap") is None  # bootstrap images may be uncaptioned
    tokens = method.tokenizer(["a cat", "a dog"])
    images, sizes = torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.full((2, 2), 8)
    batch = ImageBatch(images, sizes, None, ["a cat", "a dog"], tokens)
    assert method.caption_tokens(batch) is tokens
    assert torch.equal(method.caption_tokens(ImageBatch(batch.images, batch.sizes, None, batch.captions)), tokens)

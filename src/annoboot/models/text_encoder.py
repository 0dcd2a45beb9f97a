"""The text side of CLIP and ABCLIP: an offline BPE tokenizer and a causal text transformer.

The tokenizer is CLIP's byte-pair encoding (49,408 tokens), whose vocabulary file ships inside
the ``open_clip_torch`` wheel: nothing is downloaded at run time. The encoder follows CLIP's
text tower (token + position embeddings, pre-norm causal transformer, the end-of-text token's
feature as the caption's feature) at a configurable size; the paper's "S" is width 384 or 512.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from annoboot.errors import AnnobootError


class CaptionTokenizer:
    """Captions -> (B, context_length) int64 token ids: start, BPE tokens, end, zero padding.

    Captions longer than the context are cut and still end with the end-of-text token, which
    the encoder reads the caption's feature from.
    """

    def __init__(self, context_length: int):
        if context_length < 3:
            raise AnnobootError(f"model.context_length must be at least 3 (start, one token, end), got {context_length}")
        try:
            from open_clip.tokenizer import SimpleTokenizer
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise AnnobootError(f"the CLIP tokenizer needs open_clip_torch (pip install open_clip_torch): {exc}") from None
        self.context_length = context_length
        self._bpe = SimpleTokenizer(context_length=context_length)
        self.vocab_size = len(self._bpe.encoder)
        self.start_id = self._bpe.sot_token_id
        self.end_id = self._bpe.eot_token_id

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        if isinstance(captions, str):
            raise TypeError("CaptionTokenizer takes a list of captions, not one string")
        tokens = torch.zeros(len(captions), self.context_length, dtype=torch.int64)
        for row, caption in enumerate(captions):
            ids = self._bpe.encode(caption)[: self.context_length - 2]
            ids = [self.start_id, *ids, self.end_id]
            tokens[row, : len(ids)] = torch.tensor(ids)
        return tokens

    def decode(self, tokens: torch.Tensor) -> List[str]:
        """Token rows back to text (without start/end/padding), for inspection and tests."""
        texts = []
        for row in tokens.tolist():
            ids = [t for t in row if t not in (0, self.start_id, self.end_id)]
            texts.append(self._bpe.decode(ids).strip())
        return texts


class TextEncoder(nn.Module):
    """(B, L) token ids -> (B, width) caption features: the end-of-text token after a causal
    pre-norm transformer and a final LayerNorm (CLIP's text tower, without its projection).

    ``fused_attn`` (as timm's attention has it; the trainer switches it off on CPU): True runs
    ``nn.TransformerEncoder`` (PyTorch's fused attention kernel), False the same layers with
    the explicit softmax(q k^T / sqrt(d) + causal mask) v, whose backward on CPU is several
    times faster at caption lengths (docs/experiments/speed.md, "The training step"). Same weights, same
    function.
    """

    fused_attn: bool = True

    def __init__(self, vocab_size: int, context_length: int, width: int, depth: int, heads: int, end_id: int):
        super().__init__()
        if width % heads:
            raise AnnobootError(f"model.text_width {width} must be divisible by model.text_heads {heads}")
        self.end_id = end_id
        self.width = width
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.empty(context_length, width))
        layer = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(width)
        self.register_buffer("causal_mask", nn.Transformer.generate_square_subsequent_mask(context_length), persistent=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.position_embedding[:length]
        mask = self.causal_mask[:length, :length]
        if self.fused_attn:
            x = self.transformer(x, mask=mask, is_causal=True)
        else:
            for layer in self.transformer.layers:
                x = x + _explicit_self_attention(layer.self_attn, layer.norm1(x), mask)
                x = x + layer.linear2(F.gelu(layer.linear1(layer.norm2(x))))
        x = self.final_norm(x)
        # Each caption's feature is read at its end-of-text token (the first one, after a cut).
        end_positions = (tokens == self.end_id).int().argmax(dim=1)
        return x[torch.arange(x.shape[0], device=x.device), end_positions]


def _explicit_self_attention(attention: nn.MultiheadAttention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``attention(x, x, x, attn_mask=mask)`` (batch first, no dropout) as explicit matrix products."""
    batch, length, width = x.shape
    heads = attention.num_heads
    qkv = F.linear(x, attention.in_proj_weight, attention.in_proj_bias)
    q, k, v = qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)  # each (B, H, L, d)
    scores = (q * (width // heads) ** -0.5) @ k.transpose(-2, -1) + mask.to(q.dtype)
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, length, width)
    return attention.out_proj(out)

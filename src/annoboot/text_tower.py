"""The text half of caption models (CLIP, ABCLIP) after training, and its files in an export.

A :class:`TextTower` holds what a caption model's joint space needs besides the image backbone:
the BPE tokenizer, the text encoder and the two projections into the joint space. It has the
interface the image-text evaluation reads (``tokenizer``, ``embed_texts``, ``embed_images``), so
:mod:`annoboot.eval.image_text` builds zero-shot classifiers from it as from the method.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from annoboot.checked_files import read_json_object, read_safetensors, save_safetensors
from annoboot.errors import AnnobootError
from annoboot.eval.image_text import embed_texts
from annoboot.models import CaptionTokenizer, TextEncoder

TEXT_WEIGHTS_FILE = "text_tower.safetensors"
TEXT_CONFIG_FILE = "text_config.json"
# The sizes text_config.json holds, each a positive integer (the bound keeps a damaged file from
# asking for a tower of terabytes).
TEXT_SETTINGS = ("context_length", "text_width", "text_depth", "text_heads", "embed_dim", "vocab_size", "image_width")
TEXT_SETTING_MAX = 1 << 20
TOKENIZER_NAME = "open_clip SimpleTokenizer (CLIP BPE, 49408 tokens, lower-cased)"


class TextTower(nn.Module):
    """Tokenizer + text encoder + text projection, and the image projection: the joint space."""

    def __init__(self, settings: Dict[str, int]):
        super().__init__()
        self.settings = dict(settings)
        self.tokenizer = CaptionTokenizer(settings["context_length"])
        if self.tokenizer.vocab_size != settings["vocab_size"]:
            raise AnnobootError(f"the text tower was trained with {settings['vocab_size']} tokens, this tokenizer has "
                                f"{self.tokenizer.vocab_size} (another open_clip_torch BPE vocabulary?)")
        self.text_encoder = TextEncoder(settings["vocab_size"], settings["context_length"], settings["text_width"],
                                        settings["text_depth"], settings["text_heads"], self.tokenizer.end_id)
        self.text_projection = nn.Linear(settings["text_width"], settings["embed_dim"], bias=False)
        self.image_projection = nn.Linear(settings["image_width"], settings["embed_dim"], bias=False)

    def embed_texts(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) -> joint embeddings (B, embed_dim), not normalised (as the methods')."""
        return self.text_projection(self.text_encoder(tokens))

    def embed_images(self, pooled: torch.Tensor) -> torch.Tensor:
        """Backbone pooled features (B, width) -> joint embeddings, not normalised."""
        return self.image_projection(pooled)

    @torch.inference_mode()
    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, embed_dim) L2-normalised float32 on CPU: the sentences in the joint space."""
        if isinstance(texts, str):
            raise AnnobootError("embed_text takes a list of sentences, not one string: embed_text([\"a red bag\"])")
        device = self.image_projection.weight.device
        return embed_texts(self, list(texts), device)

    @torch.inference_mode()
    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """L2-normalised joint embeddings of pooled image features, float32 on CPU."""
        return F.normalize(self.embed_images(pooled.to(self.image_projection.weight)).float(), dim=-1).cpu()


def text_tower_of(method: nn.Module) -> Optional[TextTower]:
    """The method's text tower (sharing its weights' values, not its modules), or None for a
    method without one."""
    if not getattr(method, "embeds_text", False):
        return None
    model = method.cfg.model
    settings = {"context_length": model.context_length, "text_width": model.text_width, "text_depth": model.text_depth,
                "text_heads": model.text_heads, "embed_dim": model.embed_dim, "vocab_size": method.tokenizer.vocab_size,
                "image_width": method.encoder.width}
    tower = TextTower(settings)
    tower.text_encoder.load_state_dict(method.text_encoder.state_dict())
    tower.text_projection.load_state_dict(method.text_projection.state_dict())
    tower.image_projection.load_state_dict(method.image_projection.state_dict())
    return tower.to(method.image_projection.weight.device).eval()


def save_text_tower(tower: TextTower, folder: str | Path) -> List[Path]:
    """text_tower.safetensors (its weights) and text_config.json (sizes, tokenizer) in ``folder``."""
    folder = Path(folder)
    weights = folder / TEXT_WEIGHTS_FILE
    state = {key: value.detach().to("cpu", copy=True).contiguous() for key, value in tower.state_dict().items()}
    save_safetensors(state, weights, metadata={"settings": json.dumps(tower.settings)})
    config = folder / TEXT_CONFIG_FILE
    config.write_text(json.dumps({**tower.settings, "tokenizer": TOKENIZER_NAME,
                                  "use": "annoboot.load_encoder(FOLDER).embed_text(['a sentence'])"}, indent=2) + "\n")
    return [weights, config]


def load_text_tower(folder: str | Path, device: torch.device) -> Optional[TextTower]:
    """The text tower saved in ``folder`` by :func:`save_text_tower`, or None when it has none."""
    folder = Path(folder)
    config, weights = folder / TEXT_CONFIG_FILE, folder / TEXT_WEIGHTS_FILE
    if not config.is_file() and not weights.is_file():
        return None
    what = "the text tower of an exported caption model"
    settings = read_json_object(config, what, {key: int for key in TEXT_SETTINGS})
    for key in TEXT_SETTINGS:
        if not 1 <= settings[key] <= TEXT_SETTING_MAX:
            raise AnnobootError(f"{config}: '{key}' should be in [1, {TEXT_SETTING_MAX}], found {settings[key]} ({what})")
    state, _ = read_safetensors(weights, what)
    try:
        tower = TextTower({key: settings[key] for key in TEXT_SETTINGS})
        tower.load_state_dict(state)
    except Exception as exc:
        raise AnnobootError(f"{folder}: its text tower ({TEXT_CONFIG_FILE}, {TEXT_WEIGHTS_FILE}) does not load: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    return tower.to(device).eval()


def no_text_tower(source: str, method: str = "") -> AnnobootError:
    kind = f" ({method})" if method else ""
    return AnnobootError(f"{source}{kind} has no text tower: text search and zero-shot need a CLIP or ABCLIP run "
                         "(or its exported folder)")


__all__ = ["TEXT_CONFIG_FILE", "TEXT_WEIGHTS_FILE", "TextTower", "load_text_tower", "no_text_tower", "save_text_tower",
           "text_tower_of"]

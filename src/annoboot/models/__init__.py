from annoboot.models.dino_head import DINOHead
from annoboot.models.encoder import (
    Encoder,
    EncoderOutput,
    build_encoder,
    build_resizable_encoder,
    check_patch_multiple,
    create_backbone,
)
from annoboot.models.heads import LogitScale, Projector
from annoboot.models.text_encoder import CaptionTokenizer, TextEncoder
from annoboot.models.value_decoder import RegionMeanReadout, ValueDecoder

__all__ = [
    "CaptionTokenizer",
    "DINOHead",
    "Encoder",
    "EncoderOutput",
    "LogitScale",
    "Projector",
    "TextEncoder",
    "RegionMeanReadout",
    "ValueDecoder",
    "build_encoder",
    "build_resizable_encoder",
    "check_patch_multiple",
    "create_backbone",
]

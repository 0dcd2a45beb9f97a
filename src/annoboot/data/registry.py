"""Source kinds by name. Each source module registers how a :class:`~annoboot.config.SourceConfig`
becomes its source, and the options only it reads: a small dataclass next to its code, whose
fields config.py adds to ``SourceConfig`` (one flat namespace: ``data.annotation.scenes``,
``data.bootstrap.mix_weights``). A new kind is one module plus its import in data/__init__.py.

An option class may define ``check(src, key, selected)``: raise AnnobootError naming ``key``.<option>
when a value cannot work; ``selected`` says whether ``src.kind`` is the kind that reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional


@dataclass(frozen=True)
class SourceKind:
    name: str
    build: Callable[[Any], Any]  # SourceConfig -> ImageSource (or an AnnobootError saying why not)
    options: Optional[type]  # the dataclass of the options this kind alone reads


SOURCE_REGISTRY: Dict[str, SourceKind] = {}


def register_source(name: str, options: Optional[type] = None) -> Callable:
    """Decorator on a builder ``build(cfg: SourceConfig) -> ImageSource``: registers kind ``name``."""

    def register(build: Callable) -> Callable:
        if name in SOURCE_REGISTRY:
            raise ValueError(f"source kind '{name}' is registered twice")
        SOURCE_REGISTRY[name] = SourceKind(name, build, options)
        return build

    return register


def source_option_classes() -> List[type]:
    """The option classes of every registered kind, each once, in registration order."""
    return list(dict.fromkeys(kind.options for kind in SOURCE_REGISTRY.values() if kind.options is not None))

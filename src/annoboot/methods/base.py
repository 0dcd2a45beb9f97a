"""What every pre-training method provides to the shared trainer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Dict, List, Optional, Tuple

import torch
from torch import nn

from annoboot.batch import ImageBatch
from annoboot.config import Config
from annoboot.methods.registry import METHOD_REGISTRY, register_method  # noqa: F401 (re-exported)
from annoboot.models.encoder import Encoder
from annoboot.option_ranges import FRACTION, PROBABILITY, option

# A metric the logger reports as a rate over its interval (summed numerator / summed
# denominator, e.g. agreement hits over view pairs) rather than a mean of per-step values: the
# method returns both sums under these suffixes (:func:`rate_metric`), the logger their ratio
# under the bare name.
RATE_NUMERATOR, RATE_DENOMINATOR = "#numerator", "#denominator"


def rate_metric(name: str, numerator: torch.Tensor, denominator: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The two sums of rate metric ``name``, for :attr:`StepOutput.metrics`."""
    return {name + RATE_NUMERATOR: numerator, name + RATE_DENOMINATOR: denominator}


OptionSections = Dict[str, Tuple[type, ...]]


def merge_options(*parts: OptionSections) -> OptionSections:
    """The option classes of several parts per section, each once, in order."""
    merged: Dict[str, Tuple[type, ...]] = {}
    for part in parts:
        for section, classes in part.items():
            merged[section] = merged.get(section, ()) + tuple(c for c in classes if c not in merged.get(section, ()))
    return merged


@dataclass
class EMATargetOptions:
    """method.*: the EMA target (or teacher) network the trainer keeps for a method that asks for
    one (``uses_target``). Momentum m per step (time constant 1/(1 - m) steps), cosine-annealed
    from ema_momentum to ema_momentum_end (set them equal for a constant rate). Published: 0.996
    (250 steps, 0.25% of a 100k-step run), annealed to 1 (ABSimCLR, ABDINO, DINO) or constant (ABCLIP)."""

    ema_momentum: float = option(0.996, PROBABILITY)
    ema_momentum_end: float = option(1.0, PROBABILITY)
    # Cap on the starting time constant as a fraction of train.steps, so that short runs bootstrap
    # from a target that follows the online network (method.md section 4); None: the rate as given.
    ema_horizon: Optional[float] = option(0.02, FRACTION)


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar to minimise
    metrics: Dict[str, torch.Tensor] = field(default_factory=dict)  # detached, on device (no host sync)


class Method(nn.Module):
    """A method owns its modules and its loss; the trainer owns everything else.

    ``batch_sizes`` says how many images each named data stream must deliver per step
    ('annotation', and 'bootstrap' for annotation bootstrapping). Buffers the method updates
    itself (e.g. a centre) live in the online network; the EMA target copies buffers. ``uses_target`` asks the
    trainer for an EMA copy of the whole method, passed to ``training_step`` as ``target_network``;
    its momentum follows ``ema_momentum``/``ema_momentum_end`` of the method config.
    """

    # The options this method reads beyond the core config, per section ("method", "model",
    # "views"): small dataclasses declared next to the code that reads them. Their fields become
    # keys of that section (one flat namespace, shared by all methods: a key two option classes
    # declared would be refused when the schema is built).
    config_options: ClassVar[OptionSections] = {}
    uses_target: bool = False
    # Whether the method can take its TD targets from the online network's own forward instead
    # of an EMA target (method.target_network=online); such a method then sets uses_target False.
    online_targets: bool = False
    # Whether the EMA target's BatchNorm layers normalise with the statistics of the batch it is
    # given (DINO's teacher), or with the running statistics it copies from the online network.
    target_batch_statistics: bool = True
    # The fewest annotation images a step can learn from: contrastive losses need a negative.
    min_annotation_images: int = 1

    @property
    def min_bootstrap_images(self) -> int:
        """The fewest bootstrap images a step can learn from (a method whose reward compares
        images with each other may need more than one)."""
        return 1
    # Whether the method embeds images and texts in one space (``embed_images``,
    # ``embed_texts``, ``tokenizer``): zero-shot and retrieval evaluation apply.
    embeds_text: bool = False
    # Annotation bootstrapping: what the annotations l of the value function Q(l | x, a) (the
    # module ``value_function``) are, for value maps and localisation: "image" (annotation
    # images), "caption" (texts) or "prototype" (a fixed learned set); None for a method without
    # a value function. :meth:`annotation_keys` turns annotations of that kind into psi_AB.
    annotation_kind: Optional[str] = None
    encoder: Encoder

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg

    def views_per_image(self) -> int:
        """Views the base method renders of each annotation image (SimCLR 2, DINO 2 + locals, CLIP 1)."""
        raise NotImplementedError

    def batch_sizes(self) -> Dict[str, int]:
        return {"annotation": self.cfg.train.batch_size}

    def needs_captions(self, stream: str) -> bool:
        """Whether the batches of ``stream`` must carry captions (image-text methods)."""
        return False

    def caption_tokenizer(self, stream: str) -> Optional[Callable[[List[str]], torch.Tensor]]:
        """Captions -> token ids for the batches of ``stream``, or None: the stream runs it in
        its loader workers, so that the training thread does not tokenise every step."""
        return None

    def views_per_step(self) -> int:
        """Rendered views per step: what throughput figures and fair comparisons count."""
        sizes = self.batch_sizes()
        return self.views_per_image() * sizes["annotation"] + self.cfg.views.bootstrap_views * sizes.get("bootstrap", 0)

    def training_step(self, batches: Dict[str, ImageBatch], target_network: "Method | None", step: int) -> StepOutput:
        """The loss of one step. ``step`` (0-based) drives method-specific schedules."""
        raise NotImplementedError

    def annotation_keys(self, annotations=None) -> torch.Tensor:
        """psi_AB (L, d), the keys the value function scores moves against, of ``annotations``:
        views (L, 3, S, S) in [0, 1] for kind "image", L strings for "caption", None for
        "prototype" (the method's own set). Only for methods with an ``annotation_kind``."""
        raise NotImplementedError(f"method {self.cfg.method.name} has no value function")

    def after_backward(self, step: int) -> None:
        """Called between backward and the optimizer step (e.g. to freeze a layer's gradients)."""

    def forward(self, batches: Dict[str, ImageBatch], target_network: "Method | None", step: int) -> StepOutput:
        # DistributedDataParallel synchronises gradients of what runs through forward().
        return self.training_step(batches, target_network, step)

"""The evaluation suite: kNN, linear, MAP and decoder probes of frozen features, for any task.

:func:`run_probes` runs the probes ``EvalConfig.probes`` names on features extracted once
(:class:`~annoboot.eval.features.Features`: pooled vectors, and tokens when a token probe is
asked for), with the settings of ``EvalConfig``. The task says what the probes predict:
single-label classification (``fitting.SINGLE_LABEL``: :func:`annoboot.eval.evaluate`) or
multi-label (``multilabel.MULTI_LABEL``: which classes a scene holds,
:func:`annoboot.eval.scenes.multilabel_probe`); everything else is shared.
"""

from __future__ import annotations

from typing import Any, Dict

import torch

from annoboot.config import EvalConfig
from annoboot.errors import AnnobootError
from annoboot.eval.decoder_probe import DecoderHead, check_decoder_options, decoder_width
from annoboot.eval.features import Features
from annoboot.eval.fitting import check_probe_inputs, fit_and_select, seeded_heads
from annoboot.eval.linear import standardise, zero_linear_heads
from annoboot.eval.map_probe import MAPHead

PROBES = ("knn", "linear", "map", "decoder")
TOKEN_PROBES = ("map", "decoder")  # the probes that read tokens (N, T, D), not the pooled vector
# Rows per step of the linear probe and of the token probes.
LINEAR_BATCH, TOKEN_BATCH = 1024, 256


def check_probe_config(cfg: EvalConfig) -> None:
    """AnnobootError naming an unknown probe or a bad decoder-probe option, before any feature is extracted."""
    unknown = [name for name in cfg.probes if name not in PROBES]
    if unknown:
        raise AnnobootError(f"eval.probes holds unknown probe(s) {', '.join(unknown)}; choose from {', '.join(PROBES)}")
    check_decoder_options(cfg)


def wants_tokens(cfg: EvalConfig) -> bool:
    return any(name in cfg.probes for name in TOKEN_PROBES)


def run_probes(
    train: Features,
    test: Features,
    train_targets: torch.Tensor,
    test_targets: torch.Tensor,
    num_outputs: int,
    cfg: EvalConfig,
    task: Any,
    device: torch.device,
    progress: bool = False,
) -> Dict[str, Any]:
    """The probes of ``cfg.probes`` on extracted features, with ``task``'s targets and metric.

    Returns {probe: the task's test metric (top-1 % or macro mAP %) for each probe run,
    "details": {probe: its settings and val results}}, and, for tasks that report more than
    their metric (multi-label: F1), {extra: {probe: value}} (e.g. "f1").
    """
    metric = f"test_{task.metric}"
    results: Dict[str, Any] = {}
    details: Dict[str, Any] = {}

    def record(probe: str, outcome: Dict[str, Any], settings: Dict[str, Any]) -> None:
        results[probe] = outcome[metric]
        for key, value in outcome.items():
            if key.startswith("test_") and key != metric:
                results.setdefault(key[len("test_"):], {})[probe] = value
        details[probe] = settings if probe == "knn" else {**settings, **outcome}

    if "knn" in cfg.probes:
        outcome = task.knn(train.pooled, train_targets, test.pooled, test_targets, num_outputs, cfg.knn_k,
                           cfg.knn_temperature, device)
        record("knn", outcome, {"k": min(cfg.knn_k, len(train)), "temperature": cfg.knn_temperature})
    if "linear" in cfg.probes:
        lrs = tuple(cfg.linear_lrs)
        check_probe_inputs(train.pooled, train_targets, test.pooled, test_targets, lrs)
        train_x, test_x = standardise(train.pooled, test.pooled, device)
        heads = zero_linear_heads(train_x.shape[1], num_outputs, len(lrs), device)
        outcome = fit_and_select(heads, lrs, train_x, train_targets.to(device), test_x, test_targets.to(device),
                                 cfg.linear_epochs, LINEAR_BATCH, cfg.val_fraction, cfg.seed, device, 0.0, task,
                                 task.chunk_size(LINEAR_BATCH, tokens=False), "linear probe" if progress else None)
        record("linear", outcome, {"epochs": cfg.linear_epochs})
    token_heads = []
    if "map" in cfg.probes:
        token_heads.append(("map", "MAP probe", tuple(cfg.map_lrs), cfg.map_epochs,
                            lambda dim: MAPHead(dim, num_outputs), {}))
    if "decoder" in cfg.probes:
        def decoder(dim: int) -> DecoderHead:
            return DecoderHead(dim, num_outputs, decoder_width(cfg.decoder_probe_dim, dim), cfg.decoder_probe_depth,
                               cfg.decoder_probe_queries)

        token_heads.append(("decoder", "decoder probe", tuple(cfg.decoder_probe_lrs), cfg.decoder_probe_epochs, decoder,
                            {"depth": cfg.decoder_probe_depth, "queries": cfg.decoder_probe_queries}))
    for probe, label, lrs, epochs, make_head, settings in token_heads:
        assert train.tokens is not None and test.tokens is not None, "token probes need features with tokens"
        check_probe_inputs(train.tokens, train_targets, test.tokens, test_targets, lrs)
        dim = train.tokens.shape[2]
        heads = seeded_heads(lambda: make_head(dim), len(lrs), cfg.seed, device)
        outcome = fit_and_select(heads, lrs, train.tokens, train_targets, test.tokens, test_targets, epochs, TOKEN_BATCH,
                                 cfg.val_fraction, cfg.seed, device, 0.0, task, task.chunk_size(TOKEN_BATCH, tokens=True),
                                 label if progress else None)
        if probe == "decoder":
            settings = {**settings, "dim": decoder_width(cfg.decoder_probe_dim, dim)}
        record(probe, outcome, {"epochs": epochs, "num_tokens": train.tokens.shape[1], **settings})
    results["details"] = details
    return results


__all__ = ["PROBES", "TOKEN_PROBES", "check_probe_config", "run_probes", "wants_tokens"]

"""Token probes side by side: linear, MAP and the decoder probe on the same frozen features.

  python benchmarks/token_probes.py                 # random-init CPU-recipe encoder, 20k / 10k
  python benchmarks/token_probes.py --run runs/cpu_fmnist_simclr

Features of Fashion-MNIST (20k train, the 10k test split) are extracted once from the CPU
recipe's encoder (ViT-Tiny, 4 blocks, 8-px patches at 32 px: 16 tokens of width 192), randomly
initialised with seed 0 or loaded from --run; then each probe runs on them with EvalConfig's
settings, and its seconds and test top-1 are printed.
"""

from __future__ import annotations

import argparse
import time

import torch

from annoboot.config import EvalConfig, SourceConfig
from annoboot.data import build_source
from annoboot.eval.decoder_probe import decoder_probe
from annoboot.eval.features import extract_features
from annoboot.eval.linear import linear_probe
from annoboot.eval.map_probe import map_probe
from annoboot.models.encoder import build_encoder
from annoboot.views import Normalize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a run or checkpoint whose online encoder to probe (default: random init)")
    parser.add_argument("--train-limit", type=int, default=20000)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run:
        from annoboot.commands import load_run

        cfg, method, _ = load_run(args.run, "online", ["train.device=cpu"])
        encoder, img_size, normalize = method.encoder, cfg.views.img_size, method.normalize
    else:
        torch.manual_seed(0)
        encoder = build_encoder("vit_tiny_patch16_224", 32, {"patch_size": 8, "depth": 4, "global_pool": "avg"})
        img_size, normalize = 32, Normalize([0.5] * 3, [0.5] * 3)
    start = time.perf_counter()
    train = extract_features(encoder, build_source(SourceConfig(kind="fashion_mnist", split="train", limit=args.train_limit)),
                             img_size, normalize, keep_tokens=True)
    test = extract_features(encoder, build_source(SourceConfig(kind="fashion_mnist", split="test")), img_size, normalize,
                            keep_tokens=True)
    print(f"features: {time.perf_counter() - start:.1f} s, tokens {tuple(train.tokens.shape)} / {tuple(test.tokens.shape)}; "
          f"torch threads {torch.get_num_threads()}")
    cfg = EvalConfig()
    data = (train.tokens, train.labels, test.tokens, test.labels, 10)
    probes = [
        ("linear, 20 epochs", lambda: linear_probe(train.pooled, train.labels, test.pooled, test.labels, 10, lrs=cfg.linear_lrs, epochs=20)),
        ("MAP, 5 epochs", lambda: map_probe(*data, lrs=cfg.map_lrs, epochs=5)),
        (f"MAP, {cfg.map_epochs} epochs", lambda: map_probe(*data, lrs=cfg.map_lrs, epochs=cfg.map_epochs)),
        ("decoder, defaults", lambda: decoder_probe(*data, lrs=cfg.decoder_probe_lrs, epochs=cfg.decoder_probe_epochs,
                                                    depth=cfg.decoder_probe_depth, num_queries=cfg.decoder_probe_queries,
                                                    dim=cfg.decoder_probe_dim)),
        ("decoder, full width", lambda: decoder_probe(*data, lrs=cfg.decoder_probe_lrs, epochs=cfg.decoder_probe_epochs,
                                                      depth=cfg.decoder_probe_depth, num_queries=cfg.decoder_probe_queries,
                                                      dim=None)),
    ]
    for name, run in probes:
        start = time.perf_counter()
        result = run()
        print(f"{name:<22} {time.perf_counter() - start:7.1f} s  test {result['test_acc']:.2f}  lr {result['best_lr']:g}", flush=True)


if __name__ == "__main__":
    main()

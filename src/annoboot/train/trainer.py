"""The one trainer every method runs on.

It owns the plumbing: device and precision, data streams, AdamW with warm-up + cosine learning
rate and cosine weight decay, gradient clipping, the EMA target network and its momentum
schedule, checkpoints and exact resume, metrics and progress. Methods only compute a loss.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

import timm
import timm.optim
import torch
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel

from annoboot import __version__, distributed
from annoboot.config import Config, SourceConfig, saved_settings
from annoboot.data import BatchStream, ShardStream, build_source, build_stream, decode_workers
from annoboot.data.base import ImageSource
from annoboot.data.cache import cache_decoded
from annoboot.data.stream import SEED_STRIDE
from annoboot.errors import AnnobootError
from annoboot.methods import Method, build_method
from annoboot.methods.base import EMATargetOptions
from annoboot.runtime import autocast_context, compile_for_training, describe, prepare_for_device, resolve_device
from annoboot.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_latest_valid,
    nonfinite_tensors,
    save_checkpoint,
)
from annoboot.train.ema import ema_update, make_target, relative_distance
from annoboot.train.metrics import MetricAccumulator, RunLogger
from annoboot.train.run_lock import LOCK_FILE, hold_run_lock
from annoboot.train.schedules import cosine, ema_momentum, warmup_cosine

log = logging.getLogger(__name__)


class RunInterrupted(AnnobootError):
    """The run stopped on SIGTERM/SIGINT after saving a checkpoint; ``exit_code`` is what a
    shell reports for that signal (130, 143), so schedulers see the run did not finish."""

    def __init__(self, signum: int, step: int, run_dir: Path):
        self.signum, self.step = signum, step
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at step {step} after saving a checkpoint; continue with --resume (train.out_dir={run_dir})")


class _StopRequest:
    """Turns SIGTERM/SIGINT into a flag, so the loop can checkpoint before exiting."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = 0
        self._previous: Dict[int, object] = {}

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # second signal: give up at once
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """``Trainer(cfg).fit()`` pre-trains; ``resume=True`` continues from the run's newest valid
    checkpoint. A fresh run refuses a ``train.out_dir`` that holds another run, unless
    ``overwrite=True``, which moves that run aside."""

    def __init__(self, cfg: Config, resume: bool = False, overwrite: bool = False):
        self.cfg = cfg
        self.resume, self.overwrite = resume, overwrite
        self.device = resolve_device(cfg.train.device)
        self.dist = distributed.init_from_env(self.device.type)
        if self.device.type == "cuda" and self.dist.world_size > 1:
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.run_dir = Path(cfg.train.out_dir)
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank

        self.method: Method = build_method(cfg).to(self.device)
        if self.dist.world_size > 1 and self.device.type == "cuda":
            self.method = distributed.sync_batchnorm(self.method)
        prepare_for_device(self.method, self.device)
        if self.method.uses_target and EMATargetOptions not in type(self.method).config_options.get("method", ()):
            raise AnnobootError(f"method '{cfg.method.name}' asks for an EMA target network (uses_target) but does not "
                                "declare EMATargetOptions among its method options, whose ema_* keys set its rate")
        self.target_network: Optional[Method] = make_target(self.method) if self.method.uses_target else None
        if cfg.train.compile:
            compile_for_training(self.method.encoder)
            if self.target_network is not None:
                compile_for_training(self.target_network.encoder)
        # What the step calls: DDP averages gradients across ranks during backward.
        self.model: torch.nn.Module = self.method
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.method, device_ids=ids)
        torch.manual_seed(cfg.train.seed + self.dist.rank)  # different crops and colours per rank

        self.streams = self._build_streams()
        self.optimizer = self._build_optimizer()
        self.step = 0
        self.schedule_values: Dict[str, float] = {}
        self.stopped_by = 0  # the signal that stopped fit() early, if one did
        # The 0-based step of the first non-finite loss, or -1: kept on the device, read only at
        # log and checkpoint steps (no host sync per step).
        self._first_nonfinite = torch.full((), -1, dtype=torch.long, device=self.device)
        if resume:
            self._resume()

    # ----------------------------------------------------------------- setup
    def _build_streams(self) -> Dict[str, "BatchStream | ShardStream"]:
        cfg = self.cfg
        source_cfgs: Dict[str, SourceConfig] = {"annotation": cfg.data.annotation}
        source_cfgs["bootstrap"] = cfg.data.bootstrap or cfg.data.annotation
        built: Dict[str, ImageSource] = {}
        sources = {name: self._training_source(source_cfgs[name], built) for name in self.method.batch_sizes()}
        # Streams served from memory need no workers; the others share this process's cores.
        decoding = sum(source is None or source.needs_decode_workers for source in sources.values())
        streams = {}
        for offset, (name, size) in enumerate(self.method.batch_sizes().items()):
            streams[name] = build_stream(
                source_cfgs[name],
                size,
                cfg.train.seed + offset,
                self.device,
                self.dist.rank,
                self.dist.world_size,
                sources[name],
                require_captions=self.method.needs_captions(name),
                tokenize=self.method.caption_tokenizer(name),
                decoding_streams=decoding,
            )
        return streams

    def _training_source(self, src_cfg: SourceConfig, built: Dict[str, ImageSource]) -> Optional[ImageSource]:
        """The indexable source of ``src_cfg``, decoded into memory when it fits; None for shards,
        which stream. ``built`` holds one source per config: in coupled training one source
        object feeds both streams."""
        if src_cfg.kind == "webdataset":
            return None
        key = repr(src_cfg)
        if key not in built:
            progress = self.cfg.train.progress and self.dist.is_main
            workers = decode_workers(src_cfg.num_workers)  # decoded before training starts: the whole share
            built[key] = cache_decoded(build_source(src_cfg), src_cfg.cache_mb, workers, progress)
        return built[key]

    def _build_optimizer(self) -> torch.optim.Optimizer:
        t = self.cfg.train
        # No weight decay on biases, norms, scales and other 1-d parameters.
        groups = timm.optim.param_groups_weight_decay(self.method, t.weight_decay)
        # The fused kernel exists on CUDA and CPU: one pass over all parameters instead of a Python
        # loop per tensor (its gain per recipe: docs/experiments/speed.md, "The fused optimiser").
        return torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), fused=self.device.type in ("cuda", "cpu"))

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        """The full training state; collective under torch.distributed (every rank calls it)."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "version": __version__,
            "step": self.step,
            "config": self.saved_config(),
            "method": self.method.state_dict(),
            "target": None if self.target_network is None else self.target_network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "streams": {name: s.state_dict() for name, s in self.streams.items()},
            "rng": distributed.gather_objects(rng),  # one entry per rank
        }

    def load_state_dict(self, state: dict) -> None:
        try:
            self.method.load_state_dict(state["method"])
            if self.target_network is not None:
                self.target_network.load_state_dict(state["target"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise AnnobootError(
                f"checkpoint does not match this config (model or method changed?): {str(exc).splitlines()[0]}"
            ) from None
        for name, stream in self.streams.items():
            stream.load_state_dict(state["streams"][name])
        self.step = int(state["step"])
        rngs = state["rng"]
        if len(rngs) == self.dist.world_size:
            rng = rngs[self.dist.rank]
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        else:  # another world size: the model and data resume exactly, augmentations reseed
            log.warning("checkpoint has RNG states of %d ranks, this run has %d: reseeding", len(rngs), self.dist.world_size)
            torch.manual_seed(self.cfg.train.seed + self.dist.rank + SEED_STRIDE * self.step)

    def save(self) -> None:
        """Every rank calls this; rank 0 writes the one checkpoint, loadable on any world size.
        Never from a diverged run: the last good checkpoint stays the newest."""
        self.check_finite()
        state = self.state_dict()
        bad = nonfinite_tensors(state["method"])  # the same weights on every rank: all raise
        if bad:
            raise self._diverged(f"weights became non-finite by step {self.step} ({len(bad)} tensors, e.g. {bad[0]})")
        if self.dist.is_main:
            path = save_checkpoint(self.run_dir, self.step, state, keep=self.cfg.train.keep_checkpoints)
            log.info("saved checkpoint %s", path)
        distributed.barrier()

    def check_finite(self) -> None:
        """Raise, naming the step, if any loss since the start was NaN or infinite."""
        # The one host sync, at log and checkpoint steps only; collective, so every rank raises.
        firsts = [f for f in distributed.gather(self._first_nonfinite.reshape(1)).tolist() if f >= 0]
        if firsts:
            raise self._diverged(f"loss became non-finite at step {min(firsts) + 1}")

    def check_move_range(self) -> None:
        """Raise if an AB method's moves reached past method.action_range since the start (at log
        steps only: one host read; collective, so every rank raises)."""
        value_function = getattr(self.method, "value_function", None)
        if value_function is None or value_function.largest_move is None:
            return
        reach = max(distributed.gather(value_function.largest_move.reshape(1)).tolist())
        value_function.check_move_range(reach)

    def _diverged(self, what: str) -> AnnobootError:
        t = self.cfg.train
        latest = latest_checkpoint(self.run_dir)
        kept = f"the last good checkpoint is {latest}" if latest is not None else "no checkpoint was written"
        advice = "lower train.lr" + (f" (train.grad_clip={t.grad_clip} is set)" if t.grad_clip else " or set train.grad_clip")
        return AnnobootError(f"training diverged: {what} (train.lr={t.lr}); {kept}; {advice}")

    def _resume(self) -> None:
        if not list_checkpoints(self.run_dir):
            log.warning("--resume: no checkpoint under %s, starting from step 0", self.run_dir)
            return
        # Loaded to the CPU: load_state_dict copies weights and optimizer state to their
        # parameters' device, and the RNG states must stay CPU ByteTensors (on a GPU,
        # map_location=device would hand torch.set_rng_state a CUDA tensor: TypeError).
        path, state = load_latest_valid(self.run_dir, map_location="cpu")
        self.load_state_dict(state)
        log.info("resumed from %s at step %d", path, self.step)

    def _claim_run_dir(self) -> None:
        """A run folder has one owner. A fresh run in a folder holding another run's files would
        prune or mix with them (and eval would read the old checkpoints): refuse, or with
        ``overwrite`` move the old run aside to ``<out_dir>.replaced-<time>``."""
        if self.resume:
            return
        found = [p.name for p in (self.run_dir / "config.yaml", self.run_dir / "metrics.jsonl") if p.exists()]
        found += [p.name for p in list_checkpoints(self.run_dir)]
        if not found:
            return
        if not self.overwrite:
            raise AnnobootError(
                f"train.out_dir {self.run_dir} already holds a run ({', '.join(found[:4])}); continue it with "
                "--resume, choose another train.out_dir, or pass --overwrite to move it aside"
            )
        if self.dist.is_main:
            # Every file but the lock this process holds (train/run_lock.py): it keeps guarding the folder.
            aside = self.run_dir.with_name(f"{self.run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
            aside.mkdir()
            for entry in self.run_dir.iterdir():
                if entry.name != LOCK_FILE:
                    entry.rename(aside / entry.name)
            log.warning("--overwrite: moved the run previously in %s to %s", self.run_dir, aside)

    # ------------------------------------------------------------------ loop
    def _set_schedules(self, step: int) -> Dict[str, float]:
        t = self.cfg.train
        lr = warmup_cosine(step, t.steps, t.lr, t.min_lr, t.warmup_steps)
        wd = cosine(step, t.steps, t.weight_decay, t.weight_decay_end)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if group["weight_decay"] > 0:
                group["weight_decay"] = wd
        return {"schedule/lr": lr, "schedule/weight_decay": wd}

    def saved_config(self) -> Dict[str, Any]:
        """The config as config.yaml and the checkpoints hold it: the core keys and this method's options."""
        return saved_settings(self.cfg, type(self.method).config_options)

    def ema_momentum(self, step: int) -> float:
        # The options of EMATargetOptions, which a method with an EMA target declares (checked in __init__).
        m = self.cfg.method
        return ema_momentum(step, self.cfg.train.steps, m.ema_momentum, m.ema_momentum_end, m.ema_horizon)

    def compute_gradients(self) -> Dict[str, torch.Tensor]:
        """Forward and backward on the next batches: gradients in ``.grad`` (averaged over
        ranks under DDP), nothing updated yet. Returns the step's metrics as device tensors."""
        batches = {name: next(stream) for name, stream in self.streams.items()}
        self.method.train()
        if self.target_network is not None:
            self.target_network.train(self.method.target_batch_statistics)
        with autocast_context(self.device, self.cfg.train.precision):
            out = self.model(batches, self.target_network, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():  # remember the first step whose loss is not finite
            bad = ~torch.isfinite(out.loss.detach()) & (self._first_nonfinite < 0)
            self._first_nonfinite = torch.where(bad, self.step, self._first_nonfinite)
        out.loss.backward()
        self.method.after_backward(self.step)
        return {**out.metrics, "loss/total": out.loss.detach()}

    def train_step(self) -> Dict[str, torch.Tensor]:
        """One optimisation step; returns its metrics as device tensors."""
        t = self.cfg.train
        scalars = self._set_schedules(self.step)
        metrics = self.compute_gradients()
        if t.grad_clip:
            metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.method.parameters(), t.grad_clip)
        self.optimizer.step()
        if self.target_network is not None:
            momentum = self.ema_momentum(self.step)
            ema_update(self.target_network, self.method, momentum)
            scalars["schedule/ema_momentum"] = momentum
        self.step += 1
        self.schedule_values = scalars  # host floats: logged as they are, never accumulated
        return metrics

    def fit(self) -> Dict[str, float]:
        """Train to ``train.steps``; returns the last logged scalars. Rank 0 holds the run
        folder's lock throughout (a second process training there stops at once)."""
        if not self.dist.is_main:
            return self._fit()
        with hold_run_lock(self.run_dir):
            return self._fit()

    def _fit(self) -> Dict[str, float]:
        t = self.cfg.train
        main = self.dist.is_main
        if self.step == 0:
            self._claim_run_dir()
        distributed.barrier()  # every rank has looked before rank 0 writes
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(self.saved_config()))
            # Where the latest session ran (the model card and `annoboot compare` quote it).
            environment = {"hardware": describe(self.device, t.precision, t.compile), "world_size": self.dist.world_size,
                           "annoboot": __version__, "torch": torch.__version__, "timm": timm.__version__,
                           "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
            (self.run_dir / "environment.json").write_text(json.dumps(environment, indent=2) + "\n")
        images_per_step = sum(self.method.batch_sizes().values())
        logger = RunLogger(self.run_dir, t.steps, self.step, t.progress) if main else None
        accumulator = MetricAccumulator()
        last: Dict[str, float] = {}
        try:
            with _StopRequest() as stop:
                while self.step < t.steps:
                    accumulator.add(self.train_step())
                    if logger:
                        logger.advance()
                    at_log = self.step % t.log_every == 0 or self.step == t.steps
                    if at_log:
                        skipped = sum(s.skipped for s in self.streams.values())
                        scalars = accumulator.pop(reduce=distributed.all_reduce_mean)
                        scalars["data/skipped_images"] = float(skipped)
                        if self.target_network is not None:  # at log steps only: one pass over the weights
                            scalars["ema/target_online_distance"] = relative_distance(self.target_network, self.method)
                        scalars.update(self.schedule_values)
                        if logger:
                            last = logger.log(self.step, scalars, images_per_step, self.method.views_per_step())
                        else:
                            last = scalars
                        self.check_finite()
                        self.check_move_range()
                    # Ranks must agree to stop; under torch.distributed they compare at log steps.
                    stopping = stop.requested if self.dist.world_size == 1 else at_log and distributed.any_rank(stop.requested)
                    if self.step % t.ckpt_every == 0 or self.step == t.steps or stopping:
                        self.save()
                    if stopping:
                        self.stopped_by = stop.signum or signal.SIGTERM  # another rank's signal: SIGTERM
                        log.warning("stopped by signal at step %d; resume with --resume", self.step)
                        break
        finally:
            if logger:
                logger.close()
        return last

"""Run by tests/e2e/test_e2e_distributed.py under torchrun: one forward/backward, gradients to a file.

    python -m torch.distributed.run --nproc_per_node 2 tests/e2e/distributed_worker.py OUT METHOD [key=value ...]
"""

import sys

import torch

from annoboot import distributed
from annoboot.recipe import load_config
from annoboot.train import Trainer


def main() -> None:
    out, method, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    torch.set_num_threads(1)
    cfg = load_config(None, [f"method.name={method}", *overrides])
    trainer = Trainer(cfg)
    metrics = trainer.compute_gradients()
    loss = distributed.all_reduce_mean(metrics["loss/total"])
    if distributed.rank() == 0:
        grads = {name: p.grad.clone() for name, p in trainer.method.named_parameters() if p.grad is not None}
        torch.save({"loss": loss, "grads": grads, "world_size": distributed.world_size()}, out)
    distributed.barrier()
    distributed.shutdown()


if __name__ == "__main__":
    main()

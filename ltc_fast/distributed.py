"""Running under `torchrun` / `accelerate launch`: which process this is, randomness that differs between
ranks, FSDP sharding of the encoder layers, and saving a DDP- or FSDP-trained model as one ordinary
checkpoint.

The engines do the work (`DistributedDataParallel`, `torch.distributed.fsdp.fully_shard`,
`transformers.Trainer` with accelerate, whose evaluation gathers predictions across ranks and drops the
distributed sampler's padding); this module holds the few facts about *this* model they need. Everything
here also works in a plain single-process run (rank 0 of 1).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import encoders


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank: from the process group once it exists, else from the launcher's
    `RANK` variable (torchrun and accelerate set it before the Trainer creates the group), else 0."""
    return dist.get_rank() if _initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if _initialized() else int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """True on rank 0 (and in a single-process run): the one process that prints, logs and writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single-process run)."""
    if _initialized():
        dist.barrier()


def per_rank_generator(device: torch.device | str) -> torch.Generator:
    """A fresh generator for one random draw that must differ between ranks (label sampling's negatives).

    Its seed is a number drawn from torch's default CPU generator plus the rank. `Trainer` / `set_seed` seed
    that generator identically on every rank, so without the rank every process would draw the same
    negatives; with it each rank draws its own, reproducibly from the seed, and a resumed run continues
    the same stream (the Trainer checkpoints the default generators' state). Drawing from the default
    generator keeps successive calls (steps, micro-batches) independent too."""
    seed = int(torch.randint(0, 2**62, (1,)))
    return torch.Generator(device=device).manual_seed(seed + rank())


def fully_shard_model(model: nn.Module, **fully_shard_options) -> nn.Module:
    """FSDP (PyTorch's `fully_shard`) over an `AutoModelForTokenSequenceClassification`, sharded in place
    (it becomes an `FSDPModule`). Call after `torch.distributed.init_process_group` and before building the
    optimizer; `fully_shard_options` (`mesh`, `reshard_after_forward`, `mp_policy`, ...) go to every
    `fully_shard` call. Parameters, gradients and optimizer state are sharded across the ranks.

    Full attention (`label_attention="full"`, either label positions): each encoder layer is its own unit,
    gathered only while it runs; the root unit holds the rest (embeddings, the label table, the head).

    Decoupled attention: one unit for the whole model, gathered once per forward and backward. There each
    layer runs several times per step (the text, then the label chunks), and the label calls read the text
    call's keys and values: backward reaches a layer's weights through that cache before it reaches the
    layer's output, and FSDP's per-layer hooks (gather at a call's output, free after a call's input) would
    free the weights while a later call's gradient still needs them."""
    if not hasattr(getattr(model, "config", None), "label_attention") or not hasattr(model, "transformer"):
        raise ValueError(f"fully_shard_model takes an ltc_fast AutoModelForTokenSequenceClassification, got "
                         f"{type(model).__name__}")
    from torch.distributed.fsdp import fully_shard  # here: builds without torch.distributed still import ltc_fast

    if model.config.label_attention != "decoupled":
        for layer in encoders.encoder_layers(model.transformer):
            fully_shard(layer, **fully_shard_options)
    fully_shard(model, **fully_shard_options)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a `DistributedDataParallel` wrapper (FSDP2 shards in place: nothing to unwrap)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict, as ordinary CPU tensors, on rank 0; an empty dict on the other ranks.
    Under FSDP the shards are gathered (a collective: every rank must call it)."""
    module = unwrap(model)
    if not _initialized():
        return {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_pretrained(model: nn.Module, directory: str | os.PathLike, **save_options) -> None:
    """Save a model trained on one process, under DDP or under FSDP as one ordinary checkpoint, which
    `AutoModelForTokenSequenceClassification.from_pretrained` loads on a single device. Every rank calls it;
    rank 0 alone writes (`save_pretrained` with the gathered full state dict), the others wait for it."""
    module = unwrap(model)
    state = full_state_dict(module)
    if is_main_process():
        module.save_pretrained(directory, state_dict=state, **save_options)
    barrier()

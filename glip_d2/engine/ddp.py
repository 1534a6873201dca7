"""DistributedDataParallel for training on GPUs (NCCL) and on the CPU (gloo).

Detectron2's ``create_ddp_model`` always passes ``device_ids=[local rank]``, which DDP refuses for
a model on the CPU, so ``train_net.py --num-gpus N`` stopped while building its trainer on a machine
without CUDA (Detectron2's ``launch`` itself runs CPU processes with gloo). Here a model on the CPU
gets no device ids; a model on a GPU gets its local rank, as in Detectron2.

torch's ``nn.SyncBatchNorm`` (Detectron2's norm "SyncBN" and "nnSyncBN") runs on GPUs only: DDP
refuses a CPU model that has one. On the CPU those layers become Detectron2's
``NaiveSyncBatchNorm`` ("naiveSyncBN"), which synchronises the batch statistics over gloo.
"""

import logging

import detectron2.utils.comm as comm
from detectron2.layers import NaiveSyncBatchNorm
from torch import nn

logger = logging.getLogger(__name__)


def create_glip_ddp_model(model: nn.Module, **kwargs) -> nn.Module:
    """``model`` wrapped for data-parallel training when there are several processes.

    Args:
        model: the model, already on its device.
        kwargs: more arguments of ``DistributedDataParallel`` (e.g. ``broadcast_buffers``).

    Returns:
        ``model`` itself with one process, else a ``DistributedDataParallel`` of it.
    """
    if comm.get_world_size() == 1:
        return model
    first = next(model.parameters(), None)
    if first is not None and first.device.type == "cuda" and "device_ids" not in kwargs:
        kwargs["device_ids"] = [comm.get_local_rank()]
    if first is None or first.device.type == "cpu":
        swapped = cpu_sync_batch_norm(model)
        if swapped:
            logger.warning(
                f"{swapped} SyncBatchNorm layer(s) (norm 'SyncBN' / 'nnSyncBN') run as Detectron2's "
                "'naiveSyncBN' on the CPU: torch's SyncBatchNorm needs GPUs. Each process's "
                "statistics count equally (exact when the processes' inputs have one size)."
            )
    return nn.parallel.DistributedDataParallel(model, **kwargs)


def cpu_sync_batch_norm(model: nn.Module) -> int:
    """Replace, in place, each ``nn.SyncBatchNorm`` of ``model`` by a ``NaiveSyncBatchNorm`` that
    shares its parameters and buffers (an optimizer built before keeps them; state dict keys are
    unchanged). Returns how many were replaced."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.SyncBatchNorm:
                continue
            new = NaiveSyncBatchNorm(child.num_features, eps=child.eps, momentum=child.momentum,
                                     affine=child.affine,
                                     track_running_stats=child.track_running_stats)
            new._parameters = child._parameters  # the same Parameter objects
            new._buffers = child._buffers
            new.train(child.training)
            setattr(parent, name, new)
            swapped += 1
    return swapped

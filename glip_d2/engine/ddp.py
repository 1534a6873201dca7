"""DistributedDataParallel for training on GPUs (NCCL) and on the CPU (gloo).

Detectron2's ``create_ddp_model`` always passes ``device_ids=[local rank]``, which DDP refuses for
a model on the CPU, so ``train_net.py --num-gpus N`` stopped while building its trainer on a machine
without CUDA (Detectron2's ``launch`` itself runs CPU processes with gloo). Here a model on the CPU
gets no device ids; a model on a GPU gets its local rank, as in Detectron2.
"""

import detectron2.utils.comm as comm
from torch import nn


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
    return nn.parallel.DistributedDataParallel(model, **kwargs)

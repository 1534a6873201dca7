"""Device choice shared by the predictor, the model zoo and the demo CLI."""
import logging

import torch

__all__ = ["CPUFallbackMixin", "resolve_device"]

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """``device``, or "cpu" (with a log line) when it asks for CUDA and CUDA is not available."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"MODEL.DEVICE is {device!r} but CUDA is not available; using CPU.")
        return "cpu"
    return str(device)


def _cpu_if_cuda_absent(device, owner: str):
    if isinstance(device, int) and not isinstance(device, bool):
        device = f"cuda:{device}"  # Module.to(0) means CUDA device 0
    if isinstance(device, (str, torch.device)) and str(device).startswith("cuda"):
        logger.warning(
            f"{owner}.to({str(device)!r}) (Detectron2's build_model moves a model to "
            "MODEL.DEVICE), but CUDA is not available; using CPU."
        )
        return "cpu"
    return device  # a CPU device, or a dtype / tensor argument


class CPUFallbackMixin:
    """For glip_d2's meta-architectures: ``.to("cuda")`` when CUDA is not available moves the
    model to the CPU with a log line instead of failing, so Detectron2's ``build_model(cfg)``
    (which calls ``model.to(cfg.MODEL.DEVICE)``; Detectron2's default is "cuda") builds on a
    CPU-only machine, as the predictor, the model zoo and the demo CLI do. With CUDA present,
    ``.to`` is ``nn.Module.to``."""

    def to(self, *args, **kwargs):
        if not torch.cuda.is_available():
            if "device" in kwargs:
                kwargs["device"] = _cpu_if_cuda_absent(kwargs["device"], type(self).__name__)
            elif args:
                args = (_cpu_if_cuda_absent(args[0], type(self).__name__),) + tuple(args[1:])
        return super().to(*args, **kwargs)

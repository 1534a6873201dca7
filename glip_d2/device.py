"""Device choice shared by the predictor, the model zoo and the demo CLI."""
import logging

import torch

__all__ = ["resolve_device"]

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """``device``, or "cpu" (with a log line) when it asks for CUDA and CUDA is not available."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"MODEL.DEVICE is {device!r} but CUDA is not available; using CPU.")
        return "cpu"
    return str(device)

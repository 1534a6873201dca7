"""Checks of the training device that must run before the model is built."""
import torch

__all__ = ["check_training_device"]


def check_training_device(cfg) -> None:
    """Refuse a training config whose device cannot run it, before anything is built.

    Detectron2's AMPTrainer (``SOLVER.AMP.ENABLED``) runs CUDA autocast and a CUDA grad scaler;
    on the CPU it fails only at the first step, after the model and the data were built.

    Raises:
        ValueError: naming the keys to change.
    """
    if not cfg.SOLVER.AMP.ENABLED:
        return
    device = str(cfg.MODEL.DEVICE)
    if not device.startswith("cuda"):
        raise ValueError(
            f"SOLVER.AMP.ENABLED is True but MODEL.DEVICE is {device!r}: mixed-precision "
            "training (Detectron2's AMPTrainer) needs CUDA. Set SOLVER.AMP.ENABLED False to train "
            "on the CPU in float32, or MODEL.DEVICE cuda on a machine with a GPU."
        )
    if not torch.cuda.is_available():
        raise ValueError(
            f"SOLVER.AMP.ENABLED is True and MODEL.DEVICE is {device!r}, but CUDA is not "
            "available here. Set MODEL.DEVICE cpu and SOLVER.AMP.ENABLED False to train on the CPU."
        )

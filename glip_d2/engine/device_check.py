"""Checks of the device that must run before the model is built."""
import torch

__all__ = ["check_device", "check_process_count", "check_training_device"]


def check_device(cfg) -> None:
    """Refuse a ``MODEL.DEVICE`` this machine does not have, before anything is built.

    Detectron2 moves the model to ``MODEL.DEVICE`` after building it: a CUDA device without CUDA
    stopped there (with a torch traceback in each process), a misspelt device likewise.

    Raises:
        ValueError: naming the key to change.
    """
    device = str(cfg.MODEL.DEVICE)
    try:
        parsed = torch.device(device)
    except RuntimeError as e:
        raise ValueError(
            f"MODEL.DEVICE {device!r} is not a torch device ({e}); use 'cuda' or 'cpu'."
        ) from e
    if parsed.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ValueError(
            f"MODEL.DEVICE is {device!r}, but CUDA is not available here. Set MODEL.DEVICE cpu "
            "(and SOLVER.AMP.ENABLED False to train) to run on the CPU."
        )
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(
            f"MODEL.DEVICE is {device!r}, but this machine has {torch.cuda.device_count()} GPU(s) "
            "(indices from 0). Set MODEL.DEVICE cuda (each process uses its own GPU)."
        )


def check_process_count(num_processes: int) -> None:
    """Refuse more processes (``--num-gpus``) than GPUs where CUDA is available: Detectron2's
    ``launch`` then gives each process a GPU and asserts in every process that there are enough.
    Without CUDA the processes run on the CPU over gloo, any number of them. Fewer than one
    process (0 or negative) is refused: Detectron2's ``launch`` ran one process for it, silently.

    Raises:
        ValueError: naming the GPU count.
    """
    if num_processes < 1:
        raise ValueError(
            f"--num-gpus {num_processes}: the number of processes per machine must be at least 1 "
            "(on the CPU too: --num-gpus 1 MODEL.DEVICE cpu for one process)."
        )
    if num_processes > 1 and torch.cuda.is_available() and (
        num_processes > torch.cuda.device_count()
    ):
        raise ValueError(
            f"--num-gpus {num_processes}, but this machine has {torch.cuda.device_count()} GPU(s): "
            "use at most that many processes per machine."
        )


def check_training_device(cfg) -> None:
    """Refuse a training config whose device cannot run it, before anything is built.

    Detectron2's AMPTrainer (``SOLVER.AMP.ENABLED``) runs CUDA autocast and a CUDA grad scaler;
    on the CPU it fails only at the first step, after the model and the data were built.
    Whether this machine has ``MODEL.DEVICE`` at all is :func:`check_device`'s.

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

"""Detectron2's event writers, leaving out TensorBoard's where tensorboard is not installed."""
import logging
from typing import List

from detectron2.engine import default_writers
from detectron2.utils.events import EventWriter, TensorboardXWriter

__all__ = ["build_glip_writers", "tensorboard_available"]

logger = logging.getLogger(__name__)


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` imports (it needs the ``tensorboard`` package)."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def build_glip_writers(output_dir: str, max_iter: int) -> List[EventWriter]:
    """``detectron2.engine.default_writers``: the console printer, metrics.json and TensorBoard.

    Detectron2 imports tensorboard at the first write, so without it a run stopped after its
    first logging period. Here the TensorBoard writer is left out instead, with a warning; the
    console and metrics.json carry the same scalars.
    """
    writers = default_writers(output_dir, max_iter)
    if tensorboard_available():
        return writers
    logger.warning(
        "tensorboard is not installed, so this run writes no TensorBoard events (the console "
        "and %s/metrics.json carry the same scalars). `pip install tensorboard` to get them.",
        output_dir,
    )
    return [w for w in writers if not isinstance(w, TensorboardXWriter)]

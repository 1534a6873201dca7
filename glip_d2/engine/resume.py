"""Exact resume: the RNG states and the data-stream position travel in the checkpoint.

:class:`ExactResumeHook` (added by :func:`enable_exact_resume`) does two things:

* the global RNG states (Python, numpy, torch CPU and CUDA) at the end of step ``i`` are
  restored at the start of step ``i + 1``, so hooks that run in between (evaluation, PreciseBN,
  writers) never change the training randomness; the same states are saved in the checkpoint
  and restored by ``--resume``;
* the training loader's position (:class:`~glip_d2.data.stream.ResumableTrainLoader`) is saved
  in the checkpoint and restored on resume.

Together with a deterministic step (CPU), a run killed at any point and resumed from its last
checkpoint reproduces the uninterrupted run's losses exactly. With several processes each rank's
state is gathered before a checkpoint is written and each rank takes its own back on resume.
"""

import logging
import random
from typing import Dict, List

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = [
    "ExactResumeHook",
    "enable_exact_resume",
    "get_rng_state",
    "match_grad_scaler_state",
    "set_rng_state",
]

logger = logging.getLogger(__name__)


def get_rng_state() -> Dict:
    """The global RNG states as tensors, ints and lists (loadable with weights_only=True)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state = {
        "python": {"version": version, "state": list(py_state), "gauss_next": gauss_next},
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # the process's own GPU only (one per process): the states of every visible GPU did not
        # fit a machine with fewer, and the rank that resumes may run on another GPU index
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict) -> None:
    """Restore what :func:`get_rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, torch.Tensor):
            torch.cuda.set_rng_state(cuda)
        else:  # every visible GPU's state (checkpoints of earlier versions): those that exist here
            for i, device_state in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(device_state, i)


class ExactResumeHook(HookBase):
    """Keeps the training RNG apart from other hooks and checkpoints it with the data stream.

    Must run before the checkpointer in ``after_step`` (:func:`enable_exact_resume` puts it
    first).
    """

    def __init__(self, data_loader, checkpoint_period: int = 0, max_iter: int = 0):
        """
        Args:
            data_loader: the trainer's loader; its position is saved when it has
                ``state_dict`` / ``load_state_dict`` (a ResumableTrainLoader).
            checkpoint_period, max_iter: when checkpoints are written (SOLVER.CHECKPOINT_PERIOD,
                SOLVER.MAX_ITER): with several processes the ranks' states are gathered then.
        """
        self.data_loader = data_loader
        self.checkpoint_period = checkpoint_period
        self.max_iter = max_iter
        self._rng = None
        self._gathered: List[Dict] = []

    def _local_state(self) -> Dict:
        state = {"rng": self._rng if self._rng is not None else get_rng_state()}
        if hasattr(self.data_loader, "state_dict"):
            state["stream"] = self.data_loader.state_dict()
        return state

    def before_train(self):
        start, max_iter = self.trainer.start_iter, self.trainer.max_iter
        if start >= max_iter > 0:  # Detectron2 trains nothing then, and evaluates
            logger.warning(
                f"The resumed checkpoint is at iteration {start}, SOLVER.MAX_ITER is {max_iter}: "
                "there is nothing left to train. Raise SOLVER.MAX_ITER to train longer; "
                "--eval-only evaluates a checkpoint without this run.")

    def before_step(self):
        if self._rng is not None:
            set_rng_state(self._rng)

    def after_step(self):
        self._rng = get_rng_state()
        if comm.get_world_size() > 1:
            it = self.trainer.iter
            saves = (self.checkpoint_period > 0 and (it + 1) % self.checkpoint_period == 0) or (
                it >= self.max_iter - 1
            )
            if saves:  # every rank runs this hook; only the main process writes the checkpoint
                self._gathered = comm.all_gather(self._local_state())

    def state_dict(self) -> Dict:
        ranks = self._gathered if comm.get_world_size() > 1 else [self._local_state()]
        return {"world_size": comm.get_world_size(), "ranks": ranks}

    def load_state_dict(self, state: Dict) -> None:
        world_size = comm.get_world_size()
        if state.get("world_size") != world_size or len(state.get("ranks", [])) != world_size:
            logger.warning(
                f"The checkpoint's data-stream and RNG states are of {state.get('world_size')} "
                f"processes, this run has {world_size}: weights, optimizer and iteration are "
                "restored, but the data stream starts afresh (the run will not be identical to an "
                "uninterrupted one)."
            )
            return
        mine = state["ranks"][comm.get_rank()]
        self._rng = mine["rng"]
        if "stream" in mine and hasattr(self.data_loader, "load_state_dict"):
            self.data_loader.load_state_dict(mine["stream"])


def match_grad_scaler_state(state_dict: Dict, inner_trainer) -> Dict:
    """A ``DefaultTrainer`` state dict that ``inner_trainer`` (its ``_trainer``) can load.

    Detectron2's ``AMPTrainer`` (``SOLVER.AMP.ENABLED``) reads ``state_dict["_trainer"]
    ["grad_scaler"]``, which a checkpoint of a run without AMP (``SimpleTrainer``) lacks: resuming
    it with AMP stopped with ``KeyError: 'grad_scaler'``. Here the scaler keeps its fresh state
    (logged); the other way round (an AMP checkpoint, no AMP now) the scaler's state is unused.
    """
    inner = state_dict.get("_trainer")
    scaler = getattr(inner_trainer, "grad_scaler", None)
    if scaler is None or not isinstance(inner, dict) or "grad_scaler" in inner:
        return state_dict
    logger.info("The checkpoint is of a run without AMP: the gradient scaler (SOLVER.AMP.ENABLED) "
                "starts afresh; weights, optimizer, LR schedule and iteration are restored.")
    return dict(state_dict, _trainer=dict(inner, grad_scaler=scaler.state_dict()))


def enable_exact_resume(trainer) -> ExactResumeHook:
    """Add :class:`ExactResumeHook` to a Detectron2 ``DefaultTrainer`` as its first hook (before
    the checkpointer), so ``--resume`` continues the same run, and
    :class:`~glip_d2.engine.writers.RedoneIterationLogs`, so its metrics.json and TensorBoard
    events keep one record per iteration. Call in the trainer's ``__init__``, after
    ``super().__init__`` and before ``resume_or_load``."""
    import weakref

    from .writers import RedoneIterationLogs

    cfg = trainer.cfg
    hook = ExactResumeHook(
        trainer.data_loader, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_ITER
    )
    hook.trainer = weakref.proxy(trainer)
    trainer._hooks.insert(0, hook)
    logs = RedoneIterationLogs(cfg.OUTPUT_DIR)
    logs.trainer = weakref.proxy(trainer)
    trainer._hooks.insert(1, logs)
    return hook

"""Detectron2's event writers, leaving out TensorBoard's where tensorboard is not installed, and
keeping one record per iteration when a run resumes or restarts in its OUTPUT_DIR."""
import json
import logging
import os
from typing import List

from detectron2.engine import HookBase, default_writers
from detectron2.engine.hooks import PeriodicWriter
from detectron2.utils import comm
from detectron2.utils.events import EventWriter, JSONWriter, TensorboardXWriter

__all__ = ["RedoneIterationLogs", "build_glip_writers", "drop_records_from", "tensorboard_available"]

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


class RedoneIterationLogs(HookBase):
    """Keeps metrics.json and the TensorBoard events one record per iteration across runs into
    one OUTPUT_DIR.

    Detectron2's JSONWriter appends to metrics.json and each run opens a new TensorBoard event
    file, so a run resumed from iteration ``s`` wrote the iterations after ``s`` that the killed
    run had logged a second time (two records of iteration 19, the second with the loss smoothed
    over the resumed iterations only). Before a resumed run trains, this hook removes from
    metrics.json the records of the iterations it trains again (``>= start_iter``, see
    :func:`drop_records_from`) and has the TensorBoard writer purge them
    (``SummaryWriter(purge_step=start_iter)``), as the checkpoints of those iterations are
    written again. A run started without ``--resume`` over an earlier one is warned about; the
    earlier run's records stay (Detectron2 appends), so nothing of it is lost. Only the main
    process has writers.
    """

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def before_train(self):
        start = self.trainer.start_iter
        last = os.path.join(self.output_dir, "last_checkpoint")
        if start == 0 and os.path.isfile(last) and comm.is_main_process():
            with open(last) as f:
                name = f.read().strip()
            logger.warning(
                f"{self.output_dir} holds an earlier run (last checkpoint {name}); this run starts "
                "at iteration 0 without --resume: its checkpoints overwrite the earlier run's of "
                "the same names, and its records follow the earlier ones in metrics.json. Pass "
                "--resume to continue the earlier run, or choose another OUTPUT_DIR to keep it "
                "apart.")
        if start == 0:
            return
        for writer in self._writers():
            if isinstance(writer, JSONWriter):
                dropped = drop_records_from(os.path.join(self.output_dir, "metrics.json"), start)
                if dropped:
                    logger.info(f"metrics.json: removed {dropped} record(s) of iterations >= "
                                f"{start}, which this run logs again.")
            elif isinstance(writer, TensorboardXWriter) and "_writer" not in vars(writer):
                # Detectron2 makes its SummaryWriter at the first write, from these arguments
                writer._writer_args.setdefault("purge_step", start)

    def _writers(self) -> List[EventWriter]:
        return [w for h in self.trainer._hooks if isinstance(h, PeriodicWriter) for w in h._writers]


def drop_records_from(json_file: str, first_iteration: int) -> int:
    """Remove the records of ``iteration >= first_iteration`` from a metrics.json (one json per
    line), and a last line without its newline (a write the killed run did not finish); other
    lines stay as they are. Rewritten in place: Detectron2's JSONWriter holds the file open for
    appending.

    A record of ``first_iteration`` without "lr" stays: the final evaluation of a run that
    ended there (Detectron2 logs it at iteration MAX_ITER, one past the last step, which a
    resumed run with a larger SOLVER.MAX_ITER trains next).

    Returns:
        how many lines were removed.
    """
    if not os.path.isfile(json_file):
        return 0
    with open(json_file, "r+") as f:
        lines = f.read().splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines, torn = lines[:-1], 1
        else:
            torn = 0
        records = [_record(line) for line in lines]
        kept = [line for line, r in zip(lines, records) if not _redone(r, first_iteration)]
        if len(kept) < len(lines) + torn:
            f.seek(0)
            f.write("".join(kept))
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
    return len(lines) + torn - len(kept)


def _record(line: str):
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _redone(record, first_iteration: int) -> bool:
    iteration = record.get("iteration") if record else None
    if not isinstance(iteration, int) or iteration < first_iteration:
        return False  # earlier, or not a record of Detectron2's: left alone
    # the final evaluation of a run that ended at first_iteration (no "lr": no training step),
    # wherever it is (a later run killed before its first checkpoint appended after it)
    return not (iteration == first_iteration and "lr" not in record)

"""Progress of the LVIS API's evaluation step, which is silent for minutes on LVIS-size results
(761k detections: about 1.6 min of IoUs and per-image matching)."""
import contextlib
import logging
import time

from tqdm import tqdm

__all__ = ["lvis_progress"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def lvis_progress(desc: str = "LVIS evaluation", log_every: float = 0.25):
    """Within this context ``lvis.LVISEval.evaluate`` shows a progress bar over its
    (image, category) IoU computations and (category, area, image) matchings, and logs every
    ``log_every`` of the way (for log files); the results are unchanged."""
    from lvis import LVISEval

    original = {k: getattr(LVISEval, k) for k in ("evaluate", "compute_iou", "evaluate_img")}
    state = {}

    def log():
        logger.info(f"{desc}: {100 * state['done'] / max(state['total'], 1):.0f}% "
                    f"({state['done']}/{state['total']} steps, {time.perf_counter() - state['t0']:.0f} s)")

    def step():
        state["bar"].update(1)
        state["done"] += 1
        if state["done"] >= state["next_log"] and state["done"] < state["total"]:
            state["next_log"] += state["log_step"]
            log()

    def evaluate(self):
        cats = self.params.cat_ids if self.params.use_cats else [-1]
        images = len(set(self.params.img_ids))
        total = images * len(cats) * (1 + len(self.params.area_rng))
        state.update(done=0, total=total, t0=time.perf_counter(), log_step=max(1, int(total * log_every)))
        state["next_log"] = state["log_step"]
        detections = len(getattr(getattr(self, "lvis_dt", None), "anns", ()))
        logger.info(f"{desc}: {detections} detections, {images} images x {len(cats)} categories")
        with tqdm(total=total, desc=desc, unit="step", mininterval=1.0) as bar:
            state["bar"] = bar
            result = original["evaluate"](self)
        log()
        return result

    def compute_iou(self, *args, **kwargs):
        out = original["compute_iou"](self, *args, **kwargs)
        step()
        return out

    def evaluate_img(self, *args, **kwargs):
        out = original["evaluate_img"](self, *args, **kwargs)
        step()
        return out

    LVISEval.evaluate, LVISEval.compute_iou, LVISEval.evaluate_img = evaluate, compute_iou, evaluate_img
    try:
        yield
    finally:
        for k, v in original.items():
            setattr(LVISEval, k, v)

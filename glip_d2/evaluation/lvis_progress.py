"""Progress of the LVIS API's evaluation step, which is silent for minutes on LVIS-size results
(761k detections: about 1.6 min of IoUs and per-image matching)."""
import contextlib
import logging
import time

from tqdm import tqdm

__all__ = ["lvis_progress"]

logger = logging.getLogger(__name__)

# The bar moves every total / _BAR_UPDATES steps: LVIS minival has 30M steps (5,000 images x
# 1203 categories x (IoUs + 4 area ranges)), most of them an empty (image, category) pair that
# the LVIS API skips in a fraction of a microsecond; a tqdm update per step added 1.8 us a step
# (close to a minute on minival), counting adds 0.5 us.
_BAR_UPDATES = 1000


@contextlib.contextmanager
def lvis_progress(desc: str = "LVIS evaluation", log_every: float = 0.25):
    """Within this context ``lvis.LVISEval.evaluate`` shows a progress bar over its
    (image, category) IoU computations and (category, area, image) matchings, and logs every
    ``log_every`` of the way (for log files); the results are unchanged."""
    from lvis import LVISEval

    original = {k: getattr(LVISEval, k) for k in ("evaluate", "compute_iou", "evaluate_img")}
    state = {}
    done = 0  # steps so far
    next_update = 0  # steps at which the bar (and maybe the log) catch up next

    def log():
        # rounded, but "100%" only once every step is done (748 of 750 steps would round to it)
        percent = 100 if done >= state["total"] else min(round(100 * done / state["total"]), 99)
        logger.info(f"{desc}: {percent}% "
                    f"({done}/{state['total']} steps, {time.perf_counter() - state['t0']:.0f} s)")

    def update():
        nonlocal next_update
        state["bar"].update(done - state["bar"].n)
        next_update += state["update_step"]
        if done >= state["next_log"] and done < state["total"]:
            state["next_log"] += state["log_step"]
            log()

    def evaluate(self):
        nonlocal done, next_update
        cats = self.params.cat_ids if self.params.use_cats else [-1]
        images = len(set(self.params.img_ids))
        total = images * len(cats) * (1 + len(self.params.area_rng))
        state.update(total=total, t0=time.perf_counter(), log_step=max(1, int(total * log_every)),
                     update_step=max(1, total // _BAR_UPDATES))
        state["next_log"] = state["log_step"]
        done, next_update = 0, state["update_step"]
        detections = len(getattr(getattr(self, "lvis_dt", None), "anns", ()))
        logger.info(f"{desc}: {detections} detections, {images} images x {len(cats)} categories")
        with tqdm(total=total, desc=desc, unit="step", mininterval=1.0) as bar:
            state["bar"] = bar
            result = original["evaluate"](self)
            bar.update(done - bar.n)
        log()
        return result

    # the two steps counted, each called once per (image, category) or (image, category, area)
    def counted(run):
        def step(self, *args, **kwargs):
            nonlocal done
            out = run(self, *args, **kwargs)
            done += 1
            if done >= next_update:
                update()
            return out

        return step

    LVISEval.evaluate = evaluate
    LVISEval.compute_iou = counted(original["compute_iou"])
    LVISEval.evaluate_img = counted(original["evaluate_img"])
    try:
        yield
    finally:
        for k, v in original.items():
            setattr(LVISEval, k, v)

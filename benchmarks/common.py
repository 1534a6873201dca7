"""Shared by the benchmark scripts: a random-weight model from a config, timing, device facts, and
result files."""
import argparse
import json
import os
import platform
import re
import resource
import statistics
import time

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from glip_d2 import add_glip_config
from glip_d2.atomic_file import atomic_write

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _int_at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = "int"  # argparse's "invalid int value" for a non-number
    return parse


# argparse types for counts: 0 timed calls or images measure nothing and failed only after the
# model was built ("no median for empty data", a division by zero)
positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def build_random_model(config_file: str, device: str, opts=()):
    """The config's model with random weights (no text weights loaded, no test datasets), eval mode."""
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(["MODEL.DEVICE", device, "MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED", "False",
                         "DATASETS.TEST", "()"] + list(opts))
    torch.manual_seed(0)
    return build_model(cfg).eval()


def load_trained_run(run_dir: str, opts=()):
    """(cfg, model in eval mode) of a finished training run: its OUTPUT_DIR's config.yaml (plus
    `opts`, a flat KEY VALUE list) and model_final.pth."""
    from glip_d2.checkpoint import GLIPCheckpointer

    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(os.path.join(run_dir, "config.yaml"))
    cfg.merge_from_list(list(opts))
    model = build_model(cfg)
    GLIPCheckpointer(model).load(os.path.join(run_dir, "model_final.pth"))
    return cfg, model.eval()


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ms(fn, device: str, iters: int, warmup: int):
    """Median and min wall time of `fn()` in ms after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times), min(times)


def reset_peak_memory(device: str):
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gb(device: str):
    """Peak allocated GPU memory, or the process's peak RSS on CPU (includes the model)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def device_info(device: str) -> dict:
    import transformers

    info = dict(device=device, torch=torch.__version__, transformers=transformers.__version__,
                python=platform.python_version(), threads=torch.get_num_threads())
    if device.startswith("cuda"):
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    else:
        info.update(cpu=platform.processor() or platform.machine(), cores=os.cpu_count())
    return info


def device_slug(device: str) -> str:
    """"h100", "a100", ... from the GPU name; "cpu" on CPU."""
    if not device.startswith("cuda"):
        return "cpu"
    name = torch.cuda.get_device_name().lower()
    m = re.search(r"\b([a-z]{1,2}\d{2,4}[a-z]?)\b", name.replace("nvidia", ""))
    return m.group(1) if m else re.sub(r"[^a-z0-9]+", "_", name).strip("_")


def count_flops(fn) -> float:
    """FLOPs of one call of `fn` by torch's FlopCounterMode (matmuls and convs; torchvision's
    deformable conv and NMS are not counted, so this is a lower bound)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def write_result(name: str, res: dict, out_dir: str = None) -> str:
    """Print one result and write it to `<out_dir>/<name>.json` (default benchmarks/results)."""
    print(json.dumps(res))
    out_dir = out_dir or RESULTS_DIR
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name + ".json")
    # atomically: a run stopped at the suite's budget leaves the old file or the new one, never a
    # torn one that would stop make_table from rebuilding the README tables
    atomic_write(path, lambda f: f.write(json.dumps(res, indent=1, sort_keys=True) + "\n"))
    return path


def append_result(path: str, res: dict):
    """Print one result and append it as a JSON line to `path`."""
    print(json.dumps(res))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(res) + "\n")


def training_input(model, caption, boxes, spans, size, seed=0):
    """One training input like GroundingDatasetMapper's: random image, boxes (xyxy) each named by
    one [start, end) span of `caption`."""
    from detectron2.structures import Boxes, Instances

    from glip_d2.text import create_positive_map, tokenize

    g = torch.Generator().manual_seed(seed)
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.arange(len(boxes), dtype=torch.long)
    tok = tokenize(model.tokenizer, [caption], max_length=model.max_query_len, pad_to_max=True)
    inst.gt_positive_map = create_positive_map(tok, [[s] for s in spans], max_len=model.max_query_len)
    image = torch.randint(0, 255, (3, *size), generator=g, dtype=torch.uint8)
    return {"image": image, "caption": caption, "instances": inst}

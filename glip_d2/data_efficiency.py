"""Data efficiency of a pretrained GLIP on a user's task: the GLIP paper's figure for your data.

From one checkpoint: zero-shot AP, then for each tuning mode (``prompt``, ``linear``, ``full``;
MODEL.GLIP.TUNING), each k (DATASETS.FEW_SHOT) and each seed (DATASETS.FEW_SHOT_SEED) a short
fine-tuning run and its AP. Writes ``results.json`` (every run with its settings, written
after each, so an interrupted command resumes with ``--resume``, which refuses runs measured
with other settings), ``table.md`` / ``table.json`` (mean ± std AP over seeds) and
``plot.png`` (AP vs shots per mode, zero-shot as a line)::

    python -m glip_d2.data_efficiency --config-file configs/demo_glip_tiny_shapes.yaml \\
        --weights output/demo_shapes/model_final.pth \\
        --train-dataset shapes_train_novel --test-dataset shapes_val_novel_only \\
        --output-dir output/data_efficiency

Quick runs: ``--shots 1 --seeds 0 --iters 10 --modes prompt``; ``--max-test-images`` evaluates
on the first images of the test set only.
"""
import argparse
import json
import logging
import math
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

from .atomic_file import atomic_write_json

__all__ = ["main", "run_one", "summarize", "write_outputs"]

logger = logging.getLogger("glip_d2.data_efficiency")

MODES = ("prompt", "linear", "full")
# Learning rates per mode (AdamW). Full: the official fine-tuning LR; prompt: the official
# prompt-tuning LR (BASE_LR 0.05); linear: between the two.
DEFAULT_LR = {"prompt": 0.05, "linear": 1e-3, "full": 1e-4, "language_frozen": 1e-4}


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Zero-shot vs few-shot prompt / linear / full tuning of a GLIP checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config-file", required=True, help="the model's glip_d2 config")
    p.add_argument("--weights", default="", help="pretrained checkpoint (default: MODEL.WEIGHTS)")
    p.add_argument("--train-dataset", required=True, help="registered detection dataset (few-shot source)")
    p.add_argument("--test-dataset", required=True, help="registered dataset to evaluate on")
    p.add_argument("--output-dir", default="output/data_efficiency")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES) + ["language_frozen"])
    p.add_argument("--shots", nargs="+", type=int, default=[1, 3, 5, 10], help="k of each k-shot run")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--iters", type=int, default=200, help="training iterations per run")
    p.add_argument("--batch-size", type=int, default=4, help="SOLVER.IMS_PER_BATCH of the runs")
    p.add_argument("--lr", nargs="*", default=[], metavar="MODE=LR",
                   help=f"learning rate per mode (defaults {DEFAULT_LR})")
    p.add_argument("--max-test-images", type=int, default=0,
                   help="evaluate on the first N test images only (0 = all)")
    p.add_argument("--no-zero-shot", action="store_true", help="skip the zero-shot evaluation")
    p.add_argument("--resume", action="store_true",
                   help="keep the runs already in results.json (measured with the same settings)")
    p.add_argument("--save-checkpoints", action="store_true",
                   help="save each run's final model (a prompt run's holds the learned prompt)")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return p


def _base_cfg(args):
    from detectron2.config import get_cfg

    from .config import add_glip_config
    from .data.datasets import register_datasets_from_config

    from .model_zoo import resolve_config_file

    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(resolve_config_file(args.config_file))  # a file or a shipped config
    cfg.merge_from_list(args.opts)
    register_datasets_from_config(cfg)  # DATASETS.CUSTOM / PSEUDO_LABELS, as train_net does
    if args.weights:
        cfg.MODEL.WEIGHTS = args.weights
    cfg.DATASETS.TRAIN = (args.train_dataset,)
    cfg.DATASETS.TRAIN_RATIOS = ()  # the model's own training mix; one dataset is drawn here
    cfg.DATASETS.TEST = (args.test_dataset,)
    cfg.SOLVER.IMS_PER_BATCH = args.batch_size
    cfg.TEST.EVAL_PERIOD = 0
    return cfg


def _test_subset(name: str, n: int, output_dir: Optional[str] = None) -> str:
    """A registered view of the first ``n`` images of ``name``. COCOEvaluator builds its ground
    truth from these records; the LVIS evaluators read a json, so an LVIS-format dataset's view
    gets a json of those images (written under ``output_dir``, default a new temporary folder).
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if n <= 0:
        return name
    sub = f"{name}@first{n}"
    if sub not in DatasetCatalog.list():
        # a dataset registered from a COCO json records its thing_classes and id map when it is
        # first loaded: load it before its metadata is copied
        records = DatasetCatalog.get(name)[:n]
        DatasetCatalog.register(sub, lambda: DatasetCatalog.get(name)[:n])
        meta = {k: v for k, v in MetadataCatalog.get(name).as_dict().items()
                if k not in ("name", "json_file")}
        if meta.get("evaluator_type") == "lvis":
            # the LVIS API scores every image of its json: the whole json would count the other
            # images' boxes as misses (and without one, LVISEvaluator fails to build)
            meta["json_file"] = _subset_json(
                MetadataCatalog.get(name).json_file, records, sub, output_dir)
        MetadataCatalog.get(sub).set(**{**meta, "subset_of": meta.get("subset_of", name)})
    return sub


def _subset_json(json_file: str, records: List[Dict], sub: str, output_dir: Optional[str]) -> str:
    """A copy of ``json_file`` with only the images of ``records`` and their annotations."""
    import tempfile

    from detectron2.utils.file_io import PathManager

    from .data.datasets._utils import read_json

    data = read_json(json_file, PathManager.open)
    ids = {r["image_id"] for r in records}
    data["images"] = [i for i in data.get("images", []) if i["id"] in ids]
    data["annotations"] = [a for a in data.get("annotations", []) if a["image_id"] in ids]
    folder = output_dir or tempfile.mkdtemp(prefix="glip_d2_data_efficiency_")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{sub}.json")
    atomic_write_json(path, data)
    return path


def _check_prompt_is_tested(cfg, model, what: str) -> None:
    """A prompt-tuning run must be evaluated with the prompt it tunes: another test prompt is
    scored by the text encoder (zero-shot scores), which the table would show as prompt tuning.

    Raises:
        ValueError: when a test prompt is not the tuned one.
    """
    from .engine.evaluation import prompt_test_dataset

    prompt_test_dataset(cfg, model, cfg.DATASETS.TEST[0])
    untuned = model.untuned_prompts()
    if untuned:
        raise ValueError(
            f"{what}: the test prompt {untuned[0][:120]!r} of {cfg.DATASETS.TEST[0]!r} is not the "
            f"prompt that prompt tuning learns (the class names of {cfg.DATASETS.TRAIN[0]!r} in "
            "label order, with its DATASETS.CLASS_DESCRIPTIONS), so it would be scored by the "
            "text encoder (zero-shot scores) and tabled as prompt tuning. Test on a dataset with "
            "the training dataset's classes in its order and descriptions, in one prompt "
            "(MODEL.GLIP.TEST_CHUNK_SIZE 0, MODEL.GLIP.VOCABULARY empty), or leave out "
            "--modes prompt."
        )


def _evaluate(cfg, model, output_dir: str) -> Dict[str, float]:
    from detectron2.data import build_detection_test_loader
    from detectron2.evaluation import inference_on_dataset

    from .data import GroundingDatasetMapper
    from .engine.evaluation import build_glip_evaluator, prompt_test_dataset

    name = cfg.DATASETS.TEST[0]
    prompt_test_dataset(cfg, model, name)
    loader = build_detection_test_loader(
        cfg, name, mapper=GroundingDatasetMapper(cfg, is_train=False)
    )
    res = inference_on_dataset(model, loader, build_glip_evaluator(cfg, name, output_dir))
    return _box_ap(res)


def _box_ap(results: Dict) -> Dict[str, float]:
    """AP and AP50 of an evaluation's results. Detectron2's evaluators return no "bbox" when the
    model made no detection at all: that run scores 0 (left out as NaN, it raised the mean of
    the seeds that stayed in). NaN stays NaN where AP is undefined (no ground truth)."""
    if "bbox" not in results:
        logger.warning("No detection on the test set: the run's AP and AP50 are 0.")
        return {"AP": 0.0, "AP50": 0.0}
    bbox = results["bbox"]
    return {"AP": float(bbox.get("AP", float("nan"))), "AP50": float(bbox.get("AP50", float("nan")))}


def _load(model, weights: str) -> None:
    from .checkpoint import GLIPCheckpointer

    if weights:
        GLIPCheckpointer(model).load(weights)


def run_one(cfg, mode: Optional[str], shots: int, seed: int, iters: int, output_dir: str,
            save_checkpoint: bool = False) -> Dict:
    """One point of the figure: ``mode`` None = zero-shot (no training).

    Returns:
        {"mode", "shots", "seed", "AP", "AP50", "train_seconds", "eval_seconds",
        "trainable_params", "train_images", "iters"}.
    """
    from detectron2.modeling import build_model
    from detectron2.solver import build_lr_scheduler
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.events import EventStorage

    from .checkpoint import GLIPCheckpointer
    from .data import GroundingDatasetMapper, build_grounding_train_loader
    from .engine import build_glip_optimizer

    cfg = cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR = output_dir
    cfg.MODEL.GLIP.TUNING = mode or "full"
    cfg.DATASETS.FEW_SHOT = shots
    cfg.DATASETS.FEW_SHOT_SEED = seed
    cfg.SEED = seed
    cfg.SOLVER.MAX_ITER = iters
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, max(iters // 10, 1))
    cfg.freeze()
    os.makedirs(output_dir, exist_ok=True)
    # every RNG, as train_net's default_setup does with SEED: numpy's draws the training
    # sampler's order (TrainingSampler without a seed), so torch alone left runs unrepeatable
    seed_all_rng(seed)
    model = build_model(cfg)
    _load(model, cfg.MODEL.WEIGHTS)
    record = {"mode": mode or "zero-shot", "shots": shots, "seed": seed, "iters": 0,
              "trainable_params": 0, "train_images": 0, "train_seconds": 0.0}
    if mode is not None and iters > 0:
        mapper = GroundingDatasetMapper(cfg, is_train=True)
        loader = build_grounding_train_loader(cfg, mapper)
        record["train_images"] = len(loader.dataset) if hasattr(loader, "dataset") else None
        optimizer = build_glip_optimizer(cfg, model)
        scheduler = build_lr_scheduler(cfg, optimizer)
        record["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        model.train()
        start = time.perf_counter()
        # losses that log to Detectron2's event storage (the mask head's mask_rcnn_loss, the
        # two-stage RoI heads) need one, as in Detectron2's trainers
        with EventStorage(0) as storage:
            for it, batch in zip(range(iters), loader):
                storage.iter = it
                losses = model(batch)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{mode} k={shots} seed={seed}: loss {loss.item()} at iteration {it}")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                if it == 0 and mode == "prompt":  # the first step stored the tuned prompt
                    _check_prompt_is_tested(cfg, model, f"{mode} k={shots} seed={seed}")
                if it % 10 == 0 or it == iters - 1:
                    logger.info(f"{mode} k={shots} seed={seed} iter {it + 1}/{iters} loss {loss.item():.3f}")
        record["train_seconds"] = time.perf_counter() - start
        record["iters"] = iters
        if save_checkpoint:
            GLIPCheckpointer(model, save_dir=output_dir).save("model_final")
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        record.update(_evaluate(cfg, model, output_dir))
    record["eval_seconds"] = time.perf_counter() - start
    logger.info(f"{record['mode']} k={shots} seed={seed}: AP {record['AP']:.1f} AP50 {record['AP50']:.1f}")
    return record


def _mean_std(values: Sequence[float]):
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) if len(values) > 1 else 0.0
    return mean, std


def summarize(records: List[Dict]) -> Dict:
    """{"zero_shot": AP or None, "modes": {mode: {k: {"AP", "AP_std", "AP50", "seeds",
    "train_seconds"}}}} (population std over seeds)."""
    out = {"zero_shot": None, "zero_shot_AP50": None, "modes": {}}
    for r in records:
        if r["mode"] == "zero-shot":
            out["zero_shot"], out["zero_shot_AP50"] = r["AP"], r["AP50"]
    groups: Dict = {}
    for r in records:
        if r["mode"] != "zero-shot":
            groups.setdefault(r["mode"], {}).setdefault(r["shots"], []).append(r)
    for mode, by_k in groups.items():
        out["modes"][mode] = {}
        for k in sorted(by_k):
            runs = by_k[k]
            ap, ap_std = _mean_std([r["AP"] for r in runs])
            ap50, ap50_std = _mean_std([r["AP50"] for r in runs])
            train_s, _ = _mean_std([r["train_seconds"] for r in runs])
            # the seeds the mean is over: a run whose AP is undefined (NaN) is not among them
            seeds = sum(not math.isnan(r["AP"]) for r in runs)
            out["modes"][mode][k] = {"AP": ap, "AP_std": ap_std, "AP50": ap50, "AP50_std": ap50_std,
                                     "seeds": seeds, "train_seconds": train_s,
                                     "trainable_params": runs[0].get("trainable_params", 0)}
    return out


def markdown_table(summary: Dict) -> str:
    ks = sorted({k for by_k in summary["modes"].values() for k in by_k})
    head = "| mode | trainable params | " + " | ".join(f"{k}-shot AP" for k in ks) + " | train s / run |"
    lines = [head, "|" + "---|" * (len(ks) + 3)]
    if summary["zero_shot"] is not None:
        zs = f"{summary['zero_shot']:.1f}"
        lines.append("| zero-shot | 0 | " + " | ".join(zs for _ in ks) + " | 0 |")
    for mode, by_k in summary["modes"].items():
        cells = []
        for k in ks:
            s = by_k.get(k)
            cells.append("" if s is None else f"{s['AP']:.1f} ± {s['AP_std']:.1f}")
        secs = [s["train_seconds"] for s in by_k.values()]
        params = next(iter(by_k.values()))["trainable_params"]
        lines.append(f"| {mode} | {params:,} | " + " | ".join(cells) + f" | {sum(secs) / len(secs):.0f} |")
    return "\n".join(lines) + "\n"


def plot(summary: Dict, path: str, title: str = "") -> bool:
    """AP vs shots per mode (mean ± std over seeds), zero-shot dashed. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install matplotlib): no plot.")
        return False
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    for mode, by_k in summary["modes"].items():
        ks = sorted(by_k)
        ax.errorbar(ks, [by_k[k]["AP"] for k in ks], yerr=[by_k[k]["AP_std"] for k in ks],
                    marker="o", capsize=3, label=f"{mode} tuning")
    if summary["zero_shot"] is not None:
        ax.axhline(summary["zero_shot"], color="gray", linestyle="--", label="zero-shot")
    ax.set_xlabel("shots per category (k)")
    ax.set_ylabel("AP")
    all_k = sorted({k for by_k in summary["modes"].values() for k in by_k})
    if all_k:
        ax.set_xticks(all_k)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_outputs(records: List[Dict], output_dir: str, title: str = "") -> Dict:
    summary = summarize(records)
    with open(os.path.join(output_dir, "table.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(output_dir, "table.md"), "w") as f:
        f.write(markdown_table(summary))
    plot(summary, os.path.join(output_dir, "plot.png"), title)
    return summary


def _parse_lr(items: Sequence[str]) -> Dict[str, float]:
    lr = dict(DEFAULT_LR)
    for item in items:
        mode, _, value = item.partition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = float("nan")
        # 0, a negative or a NaN rate leaves the zero-shot model, tabled as tuned (as --iters 0)
        if mode not in lr or not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"--lr takes MODE=LR with MODE in {sorted(lr)} and LR a number "
                             f"> 0, got {item!r}.")
        lr[mode] = rate
    return lr


def _check_args(parser: argparse.ArgumentParser, args) -> None:
    """Stop (exit status 2) on values that would run, but be tabled as something else: k = 0
    is DATASETS.FEW_SHOT off (all the data, tabled "0-shot"), 0 iterations leave the
    zero-shot model tabled as tuned, a negative seed is Detectron2's "random seed", and a
    repeated mode, k or seed would run twice and count as two seeds."""
    bad = [f"{flag} {v}" for flag, values, low in (
        ("--shots", args.shots, 1), ("--iters", [args.iters], 1), ("--seeds", args.seeds, 0),
        ("--batch-size", [args.batch_size], 1), ("--max-test-images", [args.max_test_images], 0),
    ) for v in values if v < low]
    if bad:
        parser.error(f"{', '.join(bad)}: --shots, --iters and --batch-size must be >= 1, "
                     "--seeds and --max-test-images >= 0.")
    # a repeated value would run its points twice, tabled as two seeds (std 0 between copies)
    repeated = [f"{flag} {v}" for flag, values in (
        ("--modes", args.modes), ("--shots", args.shots), ("--seeds", args.seeds),
    ) for v in sorted(set(values), key=values.index) if values.count(v) > 1]
    if repeated:
        parser.error(f"{', '.join(repeated)} given more than once: each value is one point of "
                     "the table; give it once.")


def _settings(cfg, args, mode: Optional[str], lr: Dict[str, float]) -> Dict:
    """What one record's AP depends on besides its mode, k and seed: the resolved config
    (--config-file, --opts, --weights, the test set with --max-test-images; MODEL.DEVICE left
    out), and for a tuned run the training set, iterations, batch size and the mode's LR."""
    import hashlib

    c = cfg.clone()
    c.defrost()
    c.MODEL.DEVICE = ""
    c.DATASETS.TRAIN, c.SOLVER.IMS_PER_BATCH = (), 0  # below, for the runs they matter to
    out = {"config_sha256": hashlib.sha256(c.dump().encode()).hexdigest()[:16],
           "weights": cfg.MODEL.WEIGHTS, "test_dataset": args.test_dataset,
           "max_test_images": args.max_test_images}
    if mode is not None:
        out.update(train_dataset=args.train_dataset, iters=args.iters,
                   batch_size=args.batch_size, lr=lr[mode])
    return out


def _check_resumed(parser, records: List[Dict], path: str, cfg, args, lr) -> None:
    """Stop (exit status 2) when a record of ``path`` was measured with other settings than
    this command's: --resume would table it beside the new runs as if measured alike."""
    for r in records:
        mode = None if r.get("mode") == "zero-shot" else r.get("mode")
        if "settings" not in r:
            parser.error(f"{path} has runs without their settings (written before glip_d2 "
                         "recorded them), so --resume cannot tell whether they were measured "
                         "like this command's runs: drop --resume or choose another --output-dir.")
        if mode is not None and mode not in lr:
            parser.error(f"{path}: run {r.get('mode')} k={r.get('shots')} has an unknown mode.")
        want = _settings(cfg, args, mode, lr)
        diff = [f"{key} {r['settings'].get(key)!r} -> {want[key]!r}" for key in want
                if r["settings"].get(key) != want[key]]
        if diff:
            what = ", ".join(diff).replace(
                "config_sha256", "resolved config (--config-file, --opts or glip_d2's defaults)")
            parser.error(f"{path}: run {r['mode']} k={r['shots']} seed={r['seed']} was measured "
                         f"with other settings ({what}); --resume would table it beside this "
                         "command's runs. Repeat the earlier settings, drop --resume, or choose "
                         "another --output-dir.")


def main(argv=None) -> Dict:
    parser = get_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    from detectron2.utils.logger import setup_logger

    setup_logger(name="glip_d2")
    setup_logger(name="detectron2", abbrev_name="d2")
    import glip_d2  # noqa: F401  (registrations)

    try:
        lr = _parse_lr(args.lr)
    except ValueError as e:
        parser.error(str(e))
    os.makedirs(args.output_dir, exist_ok=True)
    results_path = os.path.join(args.output_dir, "results.json")
    records: List[Dict] = []
    if args.resume and os.path.isfile(results_path):
        with open(results_path) as f:
            records = json.load(f)
    done = {(r["mode"], r["shots"], r["seed"]) for r in records}
    cfg = _base_cfg(args)
    cfg.DATASETS.TEST = (_test_subset(args.test_dataset, args.max_test_images, args.output_dir),)
    _check_resumed(parser, records, results_path, cfg, args, lr)

    def save():
        # written beside and renamed: a command stopped mid-write keeps the last complete file,
        # which --resume reads
        atomic_write_json(results_path, records, indent=1)
        write_outputs(records, args.output_dir, f"{args.train_dataset} -> {args.test_dataset}")

    jobs = [] if args.no_zero_shot else [(None, 0, 0)]
    # seed-major, then k: an interrupted command leaves every mode at the same points
    jobs += [(m, k, s) for s in args.seeds for k in args.shots for m in args.modes]
    for mode, k, seed in jobs:
        key = (mode or "zero-shot", k, seed)
        if key in done:
            continue
        run_cfg = cfg.clone()
        if mode is not None:
            run_cfg.SOLVER.BASE_LR = lr[mode]
        name = "zero_shot" if mode is None else f"{mode}_k{k}_seed{seed}"
        record = run_one(run_cfg, mode, k, seed, args.iters,
                         os.path.join(args.output_dir, name), args.save_checkpoints)
        record["settings"] = _settings(cfg, args, mode, lr)  # what --resume checks
        records.append(record)
        save()
    if not jobs or all(j in done for j in [(m or "zero-shot", k, s) for m, k, s in jobs]):
        save()
    summary = summarize(records)
    print(markdown_table(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])

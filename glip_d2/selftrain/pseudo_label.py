"""GLIP self-training: pseudo-label an image-caption collection with a teacher checkpoint.

    python -m glip_d2.pseudo_label --config-file configs/glip_swin_t.yaml \\
        --weights glip_tiny_model_o365_goldg.pth --input captions.jsonl --image-root images/ \\
        --output-dir output/pseudo --shard 0 --num-shards 4 [KEY VALUE ...config overrides]

For every image the caption's noun phrases (`glip_d2.nlp`: spaCy when installed, else a split at
commas, periods, semicolons and "and") are grounded by the teacher; boxes scoring at least
--score-thresh (at most --max-boxes-per-phrase per phrase) are kept. Shards run independently
(one process or machine each) and are resumable: results go to per-shard part files written atomically, a rerun
skips finished parts, and the merged output is written once every shard has finished (by
whichever shard finishes last, or --finalize-only): `--format mdetr` (default) writes the
MDETR-style json `<output-dir>/pseudo_labels.json`, `--format odvg` the ODVG grounding lines
`<output-dir>/pseudo_labels.odvg.jsonl`, `--format both` both. The format and the image root
are settings of the run, like the teacher's: every shard and resume gives the same, and
--finalize-only takes the run's unless given others (the same parts in another format, or the
images moved). Register the output as a grounding dataset for the student with
`register_pseudo_labels(name, dir)`
(`glip_d2.data.datasets.pseudo_labels`) or the config key `DATASETS.PSEUDO_LABELS`
([[name, output_dir], ...]).

The teacher runs the weights ``train_net.py --eval-only`` evaluates (the checkpoint's "ema" entry
when TEST.USE_EMA, else its raw weights; which ones is recorded with the run's settings), with its
own test thresholds (ROI_HEADS.SCORE_THRESH_TEST, ATSS.INFERENCE_TH) lowered to what
--score-thresh needs.

`python -m glip_d2.pseudo_label` runs this module (a thin entry at the package's top).
"""

import argparse
import hashlib
import logging
import os
import sys
from typing import Dict, List, Optional, Tuple

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from ..config import add_glip_config, add_two_stage_config
from ..data.datasets.pseudo_labels import register_pseudo_labels
from ..data.datasets.caption_collection import (
    CaptionRecord,
    read_caption_collection,
    shard_records,
)
from .parts import FORMATS, PartStore
from .teacher import GroundingTeacher

__all__ = [
    "run_pseudo_labelling",
    "register_pseudo_labels",
    "build_teacher",
    "load_teacher_weights",
    "lower_test_thresholds",
    "main",
    "parse_args",
]

logger = logging.getLogger("glip_d2.pseudo_label")


def run_pseudo_labelling(
    teacher: GroundingTeacher,
    records: List[CaptionRecord],
    output_dir: str,
    *,
    image_root: Optional[str] = None,
    shard: int = 0,
    num_shards: int = 1,
    part_size: int = 64,
    settings: Optional[Dict] = None,
    progress: bool = True,
    output_format: str = "mdetr",
) -> Optional[Dict]:
    """Pseudo-label one shard of `records`, resuming finished parts; merge when all are done.

    Args:
        teacher: grounds one record.
        records: the whole collection (every shard sees the same list).
        output_dir: where parts and the final json go.
        image_root: folder the records' relative image paths start from.
        shard, num_shards: which round-robin slice of `records` this call labels.
        part_size: images per part file.
        settings: anything that changes the result (teacher, thresholds); a resumed run must
            give the same.
        progress: show a tqdm progress bar.
        output_format: "mdetr", "odvg" or "both" (the merged files, see the module docstring);
            recorded with the settings, so that whichever shard finishes last writes the run's
            format (another format of a finished run: ``PartStore.finalize``, --finalize-only).

    Returns:
        the summary (images, images_with_boxes, phrases, grounded_phrases, boxes) when the final
        json was written, None when other shards still have parts to do.
    """
    from tqdm import tqdm

    mine = shard_records(records, shard, num_shards)  # checks the numbers before run.json
    if output_format not in FORMATS:  # before run.json records it
        raise ValueError(
            f"Unknown pseudo-label format {output_format!r}; use one of {sorted(FORMATS)}."
        )
    store = PartStore(output_dir, num_shards=num_shards, part_size=part_size)
    settings = dict(
        settings or {},
        output_format=output_format,
        # the labels are of the images under this root: a shard reading another root would
        # merge labels of other images of the same names
        image_root=image_root,
        teacher_score_thresh=teacher.score_thresh,
        max_boxes_per_phrase=teacher.max_boxes_per_phrase,
        nlp_backend=teacher.nlp_backend,
        teacher_weights=teacher.weights,
    )
    digest = getattr(teacher, "weights_sha256", None)
    if digest is not None:  # the checkpoint's content: its path may hold a retrained teacher
        settings["teacher_weights_sha256"] = digest
    digest = getattr(teacher, "config_sha256", None)
    if digest is not None:  # the config's content: the file at its path may have been edited
        settings["teacher_config_sha256"] = digest
    store.check_settings(settings)
    store.clean_stale(shard)
    chunks = store.chunks(mine)
    done = [store.is_done(shard, k, c) for k, c in enumerate(chunks)]
    finished = sum(len(c) for c, d in zip(chunks, done) if d)
    if finished:
        logger.info(f"Shard {shard}: resuming, {finished} images already labelled.")
    with tqdm(
        total=sum(map(len, chunks)),
        initial=finished,
        desc=f"pseudo-label shard {shard}/{num_shards}",
        unit="img",
        disable=not progress,
    ) as bar:
        for k, chunk in enumerate(chunks):
            if done[k]:
                continue
            results = []
            for record in chunk:
                results.append(teacher(record, image_root))
                bar.update(1)
            store.write_part(shard, k, chunk, results)
    missing = store.missing(records)
    if missing:
        logger.info(
            f"Shard {shard} finished; {len(missing)} parts of other shards are still missing. The "
            "last shard to finish (or --finalize-only) writes the merged json."
        )
        return None
    summary = store.finalize(records, image_root, output_format=output_format)
    logger.info(f"Wrote {', '.join(FORMATS[output_format])} in {output_dir}: {summary}")
    return summary


def warn_on_weakest_token_scores(cfg) -> bool:
    """Warn (and return True) when the teacher scores a phrase by its weakest token.

    ``SCORE_AGG MIN`` suits class names ("blue cross": both words must be there) but a caption's
    noun phrases carry articles and modifiers ("a small blue cross") that score near zero, so
    almost nothing passes the threshold: the shapes demo GLIP grounded 411 of 4380 phrases at 0.2
    with MIN and 3607 at 0.3 with MEAN (README, self-training).
    """
    aggregations = {  # build_teacher's config has both heads' keys
        "MODEL.ATSS.SCORE_AGG": cfg.MODEL.ATSS.SCORE_AGG,
        "MODEL.LANGUAGE_ROI_HEADS.SCORE_AGG": cfg.MODEL.LANGUAGE_ROI_HEADS.SCORE_AGG,
    }
    weakest = [k for k, v in aggregations.items() if v.upper() == "MIN"]
    if weakest:
        logger.warning(
            f"{weakest[0]} is MIN: a noun phrase is scored by its weakest token, and articles and "
            "modifiers ('a', 'small') score near zero, so few phrases pass --score-thresh. For "
            f"pseudo-labelling pass {weakest[0]} MEAN as an override."
        )
    return bool(weakest)


def check_score_thresh(score_thresh: float) -> float:
    """Refuse a --score-thresh outside [0, 1], the range of the teachers' scores: below 0 its
    square would raise ``ATSS.INFERENCE_TH`` (:func:`lower_test_thresholds`), above 1 nothing is
    kept."""
    if not 0.0 <= score_thresh <= 1.0:
        raise ValueError(
            f"--score-thresh {score_thresh} is outside [0, 1], the range of the teacher's scores; "
            "give 0 to keep every box the teacher finds."
        )
    return score_thresh


def lower_test_thresholds(cfg, score_thresh: float) -> Dict[str, Tuple[float, float]]:
    """Lower the model's own test thresholds (in place, before the model is built) so that
    every box scoring above `score_thresh` reaches the teacher's selection; they apply first,
    and a --score-thresh below them would silently keep nothing more. Never raises them.

    ``ROI_HEADS.SCORE_THRESH_TEST`` (two-stage) filters the score the teacher reads; GLIP's
    ``ATSS.INFERENCE_TH`` filters the label probability p before the score sqrt(p x
    centerness) <= sqrt(p), so a score of s needs p >= s^2.

    Returns:
        {key: (old, new)} of the thresholds changed (logged).
    """
    roi, atss = cfg.MODEL.ROI_HEADS, cfg.MODEL.ATSS
    targets = {  # name: (config node, key, the highest value that lets score_thresh through)
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST": (roi, "SCORE_THRESH_TEST", score_thresh),
        "MODEL.ATSS.INFERENCE_TH": (atss, "INFERENCE_TH", score_thresh**2),
    }
    changed = {}
    for name, (node, key, target) in targets.items():
        if target < node[key]:
            changed[name] = (node[key], target)
            node[key] = target
    if changed:
        logger.info(
            f"--score-thresh {score_thresh}: the teacher's own test thresholds lowered so they "
            "keep every box it could select: "
            + ", ".join(f"{k} {old} -> {new:g}" for k, (old, new) in changed.items())
            + f" (the per-image caps stay: TEST.DETECTIONS_PER_IMAGE "
            f"{cfg.TEST.DETECTIONS_PER_IMAGE}, MODEL.ATSS.DETECTIONS_PER_IMG "
            f"{cfg.MODEL.ATSS.DETECTIONS_PER_IMG})."
        )
    return changed


def weights_digest(weights: str) -> Optional[str]:
    """The sha256 of a local checkpoint file (None for no weights or a remote one),
    recorded in run.json so that shards and resumes run the same teacher even when the file at
    that path was replaced (a path or size+mtime would not tell: shards on other machines have
    their own copy)."""
    if not weights:
        return None
    try:
        from detectron2.utils.file_io import PathManager

        local = PathManager.get_local_path(weights) if "://" in weights else weights
    except Exception:  # an unknown scheme: the checkpointer will say so
        return None
    from ..model_zoo.download import sha256_of

    return sha256_of(local) if os.path.isfile(local) else None


def load_teacher_weights(model, cfg) -> str:
    """Load MODEL.WEIGHTS into the teacher as ``train_net.py --eval-only`` evaluates it: the
    checkpoint's "ema" entry when TEST.USE_EMA and it has one, else its raw weights.

    Returns:
        "ema", "model" (the raw weights) or "random" (no MODEL.WEIGHTS), for the run's settings.
    """
    from ..checkpoint import GLIPCheckpointer
    from ..engine import load_eval_weights

    if not cfg.MODEL.WEIGHTS:
        logger.warning("No --weights / MODEL.WEIGHTS: the teacher is randomly initialised.")
        return "random"
    checkpoint = GLIPCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    used = load_eval_weights(model, checkpoint, cfg.TEST.USE_EMA)
    logger.info(
        f"Teacher: the {'EMA' if used == 'ema' else 'raw'} weights of {cfg.MODEL.WEIGHTS} "
        f"(TEST.USE_EMA {cfg.TEST.USE_EMA}"
        + (", the checkpoint has an EMA" if checkpoint and checkpoint.get("ema") else "")
        + ")."
    )
    return used


def build_teacher(args) -> GroundingTeacher:
    """The teacher model from --config-file, --weights and the KEY VALUE overrides; its test
    thresholds lowered to --score-thresh (:func:`lower_test_thresholds`), its weights chosen
    as ``train_net.py --eval-only`` does (:func:`load_teacher_weights`)."""
    from ..model_zoo import resolve_config_file

    cfg = get_cfg()
    add_glip_config(cfg)
    add_two_stage_config(cfg)
    args.config_file = resolve_config_file(args.config_file)  # a file, or a shipped config's name
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.weights:
        cfg.MODEL.WEIGHTS = args.weights
    lower_test_thresholds(cfg, args.score_thresh)
    cfg.freeze()
    # the whole merged config, _BASE_ files included, for the run's settings
    config_sha256 = hashlib.sha256(cfg.dump().encode("utf-8")).hexdigest()
    warn_on_weakest_token_scores(cfg)
    model = build_model(cfg)
    weights = load_teacher_weights(model, cfg)
    return GroundingTeacher(
        model,
        min_size=cfg.INPUT.MIN_SIZE_TEST,
        max_size=cfg.INPUT.MAX_SIZE_TEST,
        input_format=cfg.INPUT.FORMAT,
        score_thresh=args.score_thresh,
        max_boxes_per_phrase=args.max_boxes_per_phrase,
        nlp_backend=args.nlp,
        weights=weights,
        weights_sha256=weights_digest(cfg.MODEL.WEIGHTS),
        config_sha256=config_sha256,
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config-file", required=True, help="teacher config (GLIP or two-stage)")
    p.add_argument("--weights", default="", help="teacher checkpoint (overrides MODEL.WEIGHTS)")
    p.add_argument(
        "--input", required=True, help=".jsonl or .csv/.tsv with file_name, caption[, id]"
    )
    p.add_argument(
        "--image-root",
        default=None,
        help="folder of relative image paths (default: the input's; --finalize-only: the run's)",
    )
    p.add_argument("--output-dir", required=True)
    p.add_argument("--shard", type=int, default=0)
    p.add_argument(
        "--num-shards", type=int, default=None, help="default 1 (--finalize-only: the run's)"
    )
    p.add_argument(
        "--part-size",
        type=int,
        default=None,
        help="images per part file, default 64 (--finalize-only: the run's)",
    )
    p.add_argument("--score-thresh", type=float, default=0.5)
    p.add_argument("--max-boxes-per-phrase", type=int, default=3, help="<= 0: no limit")
    p.add_argument(
        "--nlp", default="auto", choices=("auto", "spacy", "simple"), help="noun-phrase extractor"
    )
    p.add_argument(
        "--format",
        default=None,
        choices=sorted(FORMATS),
        help="merged output: MDETR-style json, ODVG jsonl, or both; default mdetr "
        "(--finalize-only: the run's)",
    )
    p.add_argument("--finalize-only", action="store_true", help="only merge finished shards")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p.parse_args(argv)


_LAYOUT_DEFAULTS = {"num_shards": 1, "part_size": 64}


def _finalize_store(args) -> PartStore:
    """The part store of the run in --output-dir, laid out as run.json records it (the parts
    are only found with the run's --num-shards and --part-size; other values given are
    refused, not read as "the input changed"). Without --format or --image-root,
    ``args.format`` / ``args.image_root`` become the run's (one given is written instead: the
    same parts in another format, or the images moved since the run)."""
    recorded = PartStore(args.output_dir).recorded_layout() or {}
    if args.format is None:
        args.format = recorded.get("output_format") or "mdetr"
    if args.image_root is None:
        args.image_root = recorded.get("image_root")
    layout = {}
    for key, default in _LAYOUT_DEFAULTS.items():
        given, old = getattr(args, key), recorded.get(key)
        if given is not None and old is not None and given != old:
            raise ValueError(
                f"--{key.replace('_', '-')} {given}, but the run in {args.output_dir} was made "
                f"with {old} (run.json); finalize with {old}, or leave the option out."
            )
        layout[key] = given if given is not None else old if old is not None else default
    return PartStore(args.output_dir, **layout)


def main(argv=None, teacher: Optional[GroundingTeacher] = None) -> Optional[Dict]:
    """Command-line entry point; `teacher` replaces the one built from the arguments (tests)."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s"
    )
    records = read_caption_collection(args.input)
    if args.finalize_only:
        store = _finalize_store(args)  # the run's --format and --image-root, unless given
    # absolute, as the default is: the output records it, and a student trained from another
    # folder would resolve a relative root against that folder
    image_root = os.path.abspath(
        args.image_root if args.image_root is not None else os.path.dirname(args.input)
    )
    if args.finalize_only:
        summary = store.finalize(records, image_root, output_format=args.format)
    else:
        if args.format is None:
            args.format = "mdetr"
        for key, default in _LAYOUT_DEFAULTS.items():
            if getattr(args, key) is None:
                setattr(args, key, default)
        shard_records([], args.shard, args.num_shards)  # wrong numbers: before the teacher
        if args.part_size < 1:
            raise ValueError(
                f"--part-size {args.part_size}: a part file holds at least one image; give 1 or "
                "more (default 64)."
            )
        check_score_thresh(args.score_thresh)
        teacher = teacher or build_teacher(args)
        settings = {
            "input": os.path.abspath(args.input),
            "config_file": os.path.abspath(args.config_file),
            "weights": args.weights,
            "opts": list(args.opts),
        }
        summary = run_pseudo_labelling(
            teacher,
            records,
            args.output_dir,
            image_root=image_root,
            shard=args.shard,
            num_shards=args.num_shards,
            part_size=args.part_size,
            settings=settings,
            progress=not args.no_progress,
            output_format=args.format,
        )
    if summary is not None:
        print(
            f"pseudo-labels: {summary['images']} images "
            f"({summary['images_with_boxes']} with boxes), "
            f"{summary['grounded_phrases']}/{summary['phrases']} phrases grounded, "
            f"{summary['boxes']} boxes kept -> "
            + ", ".join(os.path.join(args.output_dir, f) for f in FORMATS[args.format])
        )
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])

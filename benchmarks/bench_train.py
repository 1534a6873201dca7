#!/usr/bin/env python
"""Training speed of a GLIP config with random weights: iteration time, images/s, peak memory.

    python benchmarks/bench_train.py                       # GPU: batch 2, 800x1333, fp32
    python benchmarks/bench_train.py --amp --attention sdpa
    python benchmarks/bench_train.py --device cpu --size 320 480 --iters 2 --warmup 1

One iteration = forward with losses, backward, AdamW step (fp16 autocast + GradScaler with --amp on
GPU, bf16 autocast on CPU), as Detectron2's AMPTrainer does. The prompt is 10 COCO names with
two boxes per image. Writes benchmarks/results/<device>_train_b<batch>_<fp32|amp>_<attention>.json.
"""
import argparse

import torch
from common import (build_random_model, device_info, device_slug, non_negative_int, peak_memory_gb,
                    positive_int, reset_peak_memory, time_ms, training_input, write_result)
from glip_d2.vocabularies import COCO_CLASSES


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/glip_swin_t.yaml")
    ap.add_argument("--size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=positive_int, default=2)
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--attention", default="official", choices=("official", "sdpa"))
    ap.add_argument("--iters", type=positive_int, default=10)
    ap.add_argument("--warmup", type=non_negative_int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="more config overrides: KEY VALUE ...")
    return ap.parse_args(argv)


def run_name(args, slug: str) -> str:
    return f"{slug}_train_b{args.batch}_{'amp' if args.amp else 'fp32'}_{args.attention}"


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model = build_random_model(
        args.config, args.device, ["MODEL.DYHEAD.FUSE_CONFIG.ATTENTION", args.attention] + list(args.opts)
    ).train()
    h, w = args.size
    caption = ". ".join(COCO_CLASSES[:10])
    boxes = [[0.1 * w, 0.1 * h, 0.4 * w, 0.6 * h], [0.5 * w, 0.3 * h, 0.9 * w, 0.8 * h]]
    batch = [training_input(model, caption, boxes, [(0, 6), (8, 15)], size=(h, w), seed=s)
             for s in range(args.batch)]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    amp_dtype = torch.float16 if cuda else torch.bfloat16
    if hasattr(torch.amp, "GradScaler"):  # torch >= 2.3; torch.cuda.amp.GradScaler is deprecated
        scaler = torch.amp.GradScaler("cuda", enabled=args.amp and cuda)
    else:
        scaler = torch.cuda.amp.GradScaler(enabled=args.amp and cuda)

    def step():
        with torch.autocast(args.device.split(":")[0], dtype=amp_dtype, enabled=args.amp):
            loss = sum(model(batch).values())
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    reset_peak_memory(args.device)
    ms, ms_min = time_ms(step, args.device, args.iters, args.warmup)
    res = dict(kind="training", config=args.config, size=[h, w], batch=args.batch, amp=args.amp,
               attention=args.attention, ms_median=ms, ms_min=ms_min, images_per_s=1000 * args.batch / ms,
               peak_memory_gb=peak_memory_gb(args.device),
               params_trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
               opts=list(args.opts), **device_info(args.device))
    write_result(run_name(args, device_slug(args.device)), res, args.out_dir)


if __name__ == "__main__":
    main()

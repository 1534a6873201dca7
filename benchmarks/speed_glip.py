#!/usr/bin/env python
"""Inference / training speed of a GLIP config (random weights), CPU or GPU.

    python benchmarks/speed_glip.py --config configs/glip_swin_t.yaml --size 320 480 --device cpu
    python benchmarks/speed_glip.py --config configs/glip_swin_t.yaml --size 800 1333 --device cuda --amp --train

Writes one JSON line per run to benchmarks/results/speed.jsonl (machine, versions, settings, ms).
"""
import argparse
import platform
import time

import torch
from common import append_result, build_random_model, training_input
from glip_d2.vocabularies import COCO_CLASSES


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/glip_swin_t.yaml")
    ap.add_argument("--size", type=int, nargs=2, default=[320, 480], metavar=("H", "W"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--vocabulary", type=int, default=80, help="first N COCO names as the prompt")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--amp", action="store_true", help="fp16 autocast (bf16 on CPU)")
    ap.add_argument("--train", action="store_true", help="time a training step (batch 2) too")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/speed.jsonl")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model = build_random_model(args.config, args.device, args.opts)
    model.set_vocabulary(list(COCO_CLASSES[: args.vocabulary]))
    h, w = args.size
    image = torch.randint(0, 255, (3, h, w), dtype=torch.uint8)
    amp_dtype = torch.float16 if args.device == "cuda" else torch.bfloat16

    def infer():
        with torch.no_grad(), torch.autocast(args.device, dtype=amp_dtype, enabled=args.amp):
            model([{"image": image}])

    times = []
    for i in range(args.warmup + args.iters):
        _sync(args.device)
        t = time.perf_counter()
        infer()
        _sync(args.device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    res = dict(config=args.config, size=[h, w], device=args.device, amp=args.amp, vocabulary=args.vocabulary,
               chunks=len(model._chunks), threads=torch.get_num_threads(),
               infer_ms_median=1000 * sorted(times)[len(times) // 2], infer_ms_min=1000 * min(times),
               params=sum(p.numel() for p in model.parameters()), torch=torch.__version__,
               python=platform.python_version(), machine=platform.processor() or platform.machine(),
               gpu=torch.cuda.get_device_name() if args.device == "cuda" else None, opts=args.opts)
    if args.train:
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        caption = ". ".join(COCO_CLASSES[:10])
        batch = [training_input(model, caption, [[10, 20, 200, 300], [300, 100, 500, 400]], [(0, 6), (8, 15)], size=(h, w), seed=s)
                 for s in range(2)]
        scaler = torch.cuda.amp.GradScaler(enabled=args.amp and args.device == "cuda")
        ttimes = []
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for i in range(args.warmup + args.iters):
            _sync(args.device)
            t = time.perf_counter()
            with torch.autocast(args.device, dtype=amp_dtype, enabled=args.amp):
                loss = sum(model(batch).values())
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            _sync(args.device)
            if i >= args.warmup:
                ttimes.append(time.perf_counter() - t)
        res["train_ms_median_batch2"] = 1000 * sorted(ttimes)[len(ttimes) // 2]
        if args.device == "cuda":
            res["train_peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    append_result(args.out, res)


if __name__ == "__main__":
    main()

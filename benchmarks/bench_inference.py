#!/usr/bin/env python
"""Inference speed of a GLIP config with random weights, from preprocessed image tensors.

    # the GPU matrix of issue 8 (800x1333, GLIP-T(C)):
    python benchmarks/bench_inference.py --batch 1 --vocab coco
    python benchmarks/bench_inference.py --batch 8 --vocab coco --dtype bfloat16 --attention sdpa
    python benchmarks/bench_inference.py --batch 1 --vocab lvis --dtype bfloat16 --attention sdpa \\
        --inference-batch 31 --compile default
    # this machine:
    python benchmarks/bench_inference.py --device cpu --size 320 480 --iters 3 --warmup 1

Every speed switch is a config key (MODEL.GLIP.INFERENCE_DTYPE / INFERENCE_BATCH / COMPILE,
MODEL.DYHEAD.FUSE_CONFIG.ATTENTION); the flags only set them. Writes
benchmarks/results/<device>_infer_<vocab>_b<batch>_<dtype>_<attention>[_ib<N>][_<compile>].json
with the device, versions, settings, ms, images/s, a TFLOP/s estimate and peak memory (a FLOP
count that fails is named in "flops_error"; the times are still written).
"""
import argparse
import sys

import torch
from common import (build_random_model, count_flops, device_info, device_slug, non_negative_int,
                    peak_memory_gb, positive_int, reset_peak_memory, time_ms, write_result)
from glip_d2.vocabularies import get_vocabulary


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/glip_swin_t.yaml")
    ap.add_argument("--size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=positive_int, default=1, help="images per forward")
    ap.add_argument("--vocab", default="coco", choices=("coco", "lvis"), help="COCO-80 or LVIS-1203")
    ap.add_argument("--chunk-size", type=int, default=None,
                    help="names per prompt; default: one packed prompt for COCO-80 (as the official "
                         "COCO evaluation), 40 for LVIS (the official chunking, 31 prompts)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--attention", default="official", choices=("official", "sdpa"))
    ap.add_argument("--inference-batch", type=positive_int, default=1,
                    help="(image, chunk) pairs per tower pass")
    ap.add_argument("--compile", default="", choices=("", "default", "reduce-overhead", "max-autotune"))
    ap.add_argument("--iters", type=positive_int, default=20)
    ap.add_argument("--warmup", type=non_negative_int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's top operators")
    ap.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="more config overrides: KEY VALUE ...")
    return ap.parse_args(argv)


def run_name(args, slug: str) -> str:
    name = f"{slug}_infer_{args.vocab}_b{args.batch}_{args.dtype}_{args.attention}"
    if args.inference_batch > 1:
        name += f"_ib{args.inference_batch}"
    if args.compile:
        name += f"_{args.compile}"
    return name


def _model_flops(model, infer):
    """FLOPs of one call, counted eagerly on the official attention path, so that every setting
    of the same model divides the same work by its time (FlopCounterMode does not count every
    fused attention kernel). Counted on a second call: the first encodes the prompts, which the
    model caches, so the timed calls never run the text encoder."""
    attns = [b.fuse.attn for b in model.head.tower.blocks if b.fuse is not None]
    impls = [a.impl for a in attns]
    for a in attns:
        a.impl = "official"
    try:
        infer()
        return count_flops(infer)
    finally:
        for a, impl in zip(attns, impls):
            a.impl = impl


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):  # fp32 means fp32 (no TF32), as in the official figures
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if args.chunk_size is None:
        args.chunk_size = 40 if args.vocab == "lvis" else 0
    opts = ["MODEL.GLIP.TEST_CHUNK_SIZE", str(args.chunk_size),
            "MODEL.GLIP.INFERENCE_DTYPE", args.dtype,
            "MODEL.GLIP.INFERENCE_BATCH", str(args.inference_batch),
            "MODEL.DYHEAD.FUSE_CONFIG.ATTENTION", args.attention] + list(args.opts)
    model = build_random_model(args.config, args.device, opts)
    vocab = get_vocabulary(args.vocab)
    model.set_vocabulary(list(vocab.prompt_names))
    h, w = args.size
    g = torch.Generator().manual_seed(0)
    inputs = [{"image": torch.randint(0, 255, (3, h, w), generator=g, dtype=torch.uint8).to(args.device)}
              for _ in range(args.batch)]

    def infer():
        with torch.no_grad():
            model(inputs)

    flops = flops_error = None
    if not args.no_flops:
        try:
            flops = _model_flops(model, infer)
        except Exception as error:  # an estimate: its failure must not cost the measured times
            flops_error = f"{type(error).__name__}: {error}"
            print(f"bench_inference.py: FLOP count failed ({flops_error}); timing without it.",
                  file=sys.stderr)
    model.compile_mode = args.compile
    reset_peak_memory(args.device)
    ms, ms_min = time_ms(infer, args.device, args.iters, args.warmup)
    res = dict(kind="inference", config=args.config, size=[h, w], batch=args.batch, vocab=args.vocab,
               vocabulary_size=len(vocab.prompt_names), chunks=len(model._chunks), dtype=args.dtype,
               attention=args.attention, inference_batch=args.inference_batch, compile=args.compile,
               ms_median=ms, ms_min=ms_min, ms_per_image=ms / args.batch,
               images_per_s=1000 * args.batch / ms, peak_memory_gb=peak_memory_gb(args.device),
               params=sum(p.numel() for p in model.parameters()), opts=list(args.opts),
               **device_info(args.device))
    if flops is not None:
        res.update(gflop_per_batch=flops / 1e9, tflops_per_s=flops / (ms / 1000) / 1e12)
    if flops_error is not None:
        res["flops_error"] = flops_error
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
        with profile(activities=acts) as prof:
            infer()
            infer()
        key = "cuda_time_total" if args.device.startswith("cuda") else "cpu_time_total"
        table = prof.key_averages().table(sort_by=key, row_limit=20)
        print(table)
        res["profile_top"] = table.splitlines()[:26]
    write_result(run_name(args, device_slug(args.device)), res, args.out_dir or None)


if __name__ == "__main__":
    main()

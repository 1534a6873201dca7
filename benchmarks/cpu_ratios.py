#!/usr/bin/env python
"""CPU ratios anyone can check: LVIS-1203 vocabulary (31 prompts of 40 names) on one image.

  a) glip_d2's path: image backbone once, text encodings cached, tower + head per chunk;
  b) the official path: a full forward (backbone included) per chunk, text cached;
  c) as a) with the text cache cleared before every image (text encoded every time).

    python benchmarks/cpu_ratios.py [--config configs/demo_glip_tiny_shapes.yaml] [--size 224 224]

Appends one JSON line to benchmarks/results/cpu_ratios.jsonl.
"""
import argparse
import platform
import time

import torch
from common import append_result, build_random_model
from glip_d2.vocabularies import get_vocabulary


def _time(fn, iters):
    fn()  # warm-up
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1000 * sorted(ts)[len(ts) // 2]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo_glip_tiny_shapes.yaml")
    ap.add_argument("--size", type=int, nargs=2, default=[224, 224])
    ap.add_argument("--chunk-size", type=int, default=40)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/cpu_ratios.jsonl")
    args = ap.parse_args(argv)
    model = build_random_model(args.config, "cpu", ["MODEL.GLIP.TEST_CHUNK_SIZE", str(args.chunk_size)])
    names = list(get_vocabulary("lvis").prompt_names)  # raw names: 5 LVIS pairs collide once cleaned
    model.set_vocabulary(names)
    chunks = model._chunks
    image = {"image": torch.randint(0, 255, (3, *args.size), dtype=torch.uint8)}

    def ours():
        with torch.no_grad():
            model([image])

    def per_chunk_full_forward():
        with torch.no_grad():
            for c in chunks:  # backbone + text + tower + head, once per chunk
                x = dict(image, caption=c.caption, phrase_spans=[[list(s)] for s in c.spans])
                model([x])

    def no_text_cache():
        model._text_cache.clear()
        ours()

    res = dict(config=args.config, size=args.size, vocabulary=len(names), chunks=len(chunks),
               backbone_once_cached_ms=_time(ours, args.iters),
               full_forward_per_chunk_ms=_time(per_chunk_full_forward, args.iters),
               backbone_once_no_text_cache_ms=_time(no_text_cache, args.iters),
               threads=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version())
    res["speedup_backbone_once"] = res["full_forward_per_chunk_ms"] / res["backbone_once_cached_ms"]
    res["speedup_text_cache"] = res["backbone_once_no_text_cache_ms"] / res["backbone_once_cached_ms"]
    append_result(args.out, res)


if __name__ == "__main__":
    main()

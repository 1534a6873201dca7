#!/usr/bin/env python
"""CPU ratios anyone can check, measured side by side in one run: LVIS-1203 vocabulary (31 prompts
of 40 names) on one image, demo-sized model with random weights.

  a) official order: a full forward (backbone included) per prompt chunk, text encodings cached;
  b) glip_d2 default: image backbone once, text cached, tower + head per chunk (parity path);
  c) as b) with the text cache cleared before every image (text encoded every time);
  d) as b) with all 31 (image, chunk) pairs through tower + head in one pass
     (MODEL.GLIP.INFERENCE_BATCH 31);
  e) as d) with SDPA cross-attention (MODEL.DYHEAD.FUSE_CONFIG.ATTENTION sdpa).

    python benchmarks/cpu_ratios.py [--config configs/demo_glip_tiny_shapes.yaml] [--size 224 224]

Writes benchmarks/results/cpu_ratios.json.
"""
import argparse

import torch
from common import build_random_model, device_info, positive_int, time_ms, write_result
from glip_d2.vocabularies import get_vocabulary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo_glip_tiny_shapes.yaml")
    ap.add_argument("--size", type=int, nargs=2, default=[224, 224])
    ap.add_argument("--chunk-size", type=int, default=40)
    ap.add_argument("--iters", type=positive_int, default=3)
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    # threshold 0: a random model scores about the 0.01 prior, and the detections are compared
    model = build_random_model(args.config, "cpu", ["MODEL.GLIP.TEST_CHUNK_SIZE", str(args.chunk_size),
                                                    "MODEL.ATSS.INFERENCE_TH", "0.0"])
    names = list(get_vocabulary("lvis").prompt_names)  # raw names: 5 LVIS pairs collide once cleaned
    model.set_vocabulary(names)
    chunks = model._chunks
    image = {"image": torch.randint(0, 255, (3, *args.size), dtype=torch.uint8)}

    def ours():
        with torch.no_grad():
            return model([image])[0]["instances"]

    def per_chunk_full_forward():
        with torch.no_grad():
            for c in chunks:  # backbone + text + tower + head, once per chunk
                x = dict(image, caption=c.caption, phrase_spans=[[list(s)] for s in c.spans])
                model([x])

    def no_text_cache():
        model._text_cache.clear()
        ours()

    def timed(fn):
        return time_ms(fn, "cpu", args.iters, warmup=1)[0]

    res = dict(kind="cpu_ratios", config=args.config, size=args.size, vocabulary_size=len(names),
               chunks=len(chunks))
    res["a_full_forward_per_chunk_ms"] = timed(per_chunk_full_forward)
    res["b_backbone_once_cached_ms"] = timed(ours)
    reference = ours()
    res["c_no_text_cache_ms"] = timed(no_text_cache)
    model.inference_batch = len(chunks)
    res["d_batched_chunks_ms"] = timed(ours)
    batched = ours()
    for block in model.head.tower.blocks:
        if block.fuse is not None:
            block.fuse.attn.impl = "sdpa"
    res["e_batched_sdpa_ms"] = timed(ours)
    fast = ours()
    b = res["b_backbone_once_cached_ms"]
    res.update(
        speedup_backbone_once=res["a_full_forward_per_chunk_ms"] / b,
        speedup_text_cache=res["c_no_text_cache_ms"] / b,
        speedup_batched_chunks=b / res["d_batched_chunks_ms"],
        speedup_batched_sdpa=b / res["e_batched_sdpa_ms"],
        speedup_total_vs_official_order=res["a_full_forward_per_chunk_ms"] / min(res["d_batched_chunks_ms"], res["e_batched_sdpa_ms"]),
        # the fast paths give the same detections (scores of the 100 best, max abs deviation)
        max_score_dev_batched=float((batched.scores - reference.scores).abs().max()),
        max_score_dev_batched_sdpa=float((fast.scores - reference.scores).abs().max()),
        **device_info("cpu"),
    )
    write_result("cpu_ratios", res, args.out_dir)


if __name__ == "__main__":
    main()

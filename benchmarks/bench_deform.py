#!/usr/bin/env python
"""MODEL.DYHEAD.DEFORM_IMPL side by side: the DyHead's modulated deformable 3x3 conv on
torchvision's kernel and on gathers (glip_d2.modeling.fusion.deform), forward and backward, on the
feature maps of a GLIP-T image (256 channels; by default the five FPN levels of a 320x480 image,
each level at stride 1 and the stride-2 conv that reads the level above).

    python benchmarks/bench_deform.py [--size 320 480] [--device cpu] [--threads 1]

Writes benchmarks/results/<device>_deform_conv.json: per shape, median ms of forward and of
backward for each kernel, and whether the forwards were equal to the bit.
"""
import argparse
import math

import torch
from common import device_info, device_slug, positive_int, time_ms, write_result
from torchvision.ops import deform_conv2d

from glip_d2.modeling.fusion.deform import deform_conv3x3_by_gather

KERNELS = {
    "torchvision": lambda x, o, w, b, s, m: deform_conv2d(x, o, w, b, stride=s, padding=1, mask=m),
    "gather": deform_conv3x3_by_gather,
}


def _shapes(h, w):
    """(input h, input w, stride) of the DyHead's deformable convs for one image."""
    levels = [(math.ceil(h / 2 ** k), math.ceil(w / 2 ** k)) for k in range(3, 8)]
    out = [(lh, lw, 1) for lh, lw in levels]
    out += [(lh, lw, 2) for lh, lw in levels[:-1]]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs=2, default=[320, 480], metavar=("H", "W"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=positive_int, default=5)
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    rows, totals = [], {k: [0.0, 0.0] for k in KERNELS}
    for h, w, stride in _shapes(*args.size):
        ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
        c = args.channels
        tensors = [torch.randn(1, c, h, w, generator=g), torch.randn(1, 18, ho, wo, generator=g) * 2,
                   torch.randn(c, c, 3, 3, generator=g) * 0.02, torch.zeros(c),
                   torch.rand(1, 9, ho, wo, generator=g)]
        tensors = [t.to(args.device).requires_grad_() for t in tensors]
        row = dict(input=[h, w], stride=stride)
        outs = {}
        for name, fn in KERNELS.items():
            def forward():
                return fn(tensors[0], tensors[1], tensors[2], tensors[3], stride, tensors[4])

            def forward_backward():
                forward().sum().backward()

            outs[name] = forward().detach()
            fwd, _ = time_ms(forward, args.device, args.iters, 1)
            both, _ = time_ms(forward_backward, args.device, args.iters, 1)
            row[f"{name}_forward_ms"] = round(fwd, 2)
            row[f"{name}_backward_ms"] = round(both - fwd, 2)
            totals[name][0] += fwd
            totals[name][1] += both - fwd
        row["forward_equal"] = bool(torch.equal(outs["torchvision"], outs["gather"]))
        rows.append(row)
        print(row)
    res = dict(kind="deform_conv", size=args.size, channels=args.channels, shapes=rows,
               **{f"total_{k}_{part}_ms": round(v[i], 1) for k, v in totals.items()
                  for i, part in enumerate(("forward", "backward"))}, **device_info(args.device))
    write_result(f"{device_slug(args.device)}_deform_conv", res, args.out_dir)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""How strongly each loss of a one-stage GLIP pulls on the features it shares.

    python tools/loss_gradients.py --config-file configs/demo_glip_tiny_shapes.yaml \
        --weights output/demo_shapes/model_0000299.pth --batches 4

For training batches (the training mapper and prompts), prints the norm of the gradient of
each loss (token / box / centerness) with respect to the FPN features (what the backbone
learns from) and to the tower output (what the box, centerness and scoring layers read).
A loss whose gradient is orders of magnitude smaller than the others' barely shapes the
shared features.
"""
import argparse
import json
from typing import Dict

import torch
# tools/ (run as python tools/loss_gradients.py)
from name_accuracy import load_cpu_model, positive_int

from glip_d2.data import GroundingDatasetMapper, build_grounding_train_loader


def gradient_norms(model, batch) -> Dict[str, float]:
    """Each loss's value and the norm of its gradient on the FPN and on the tower outputs.

    Features that do not require a gradient (a frozen backbone: ``MODEL.GLIP.FREEZE_BACKBONE``,
    a tuning mode) are made to, so the norm is still what the loss asks of them; autograd
    refused them before. A tower output computed without a gradient (frozen head) is left out.
    """
    captured = {}

    def keep_fpn(mod, inp, out):
        captured["fpn"] = [out[f] for f in model.in_features]
        for f in captured["fpn"]:
            if not f.requires_grad:  # computed without autograd: a leaf, which can start one
                f.requires_grad_()

    def keep_head(mod, inp, out):
        captured["tower"] = out["visual"]

    hooks = [model.backbone.register_forward_hook(keep_fpn), model.head.register_forward_hook(keep_head)]
    try:
        losses = model(batch)
    finally:
        for h in hooks:
            h.remove()
    norms = {}
    for name, loss in losses.items():
        for where in ("fpn", "tower"):
            inputs = [t for t in captured[where] if t.requires_grad]
            if not inputs or not loss.requires_grad:
                continue
            grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
            norm = torch.sqrt(sum((g.pow(2).sum() for g in grads if g is not None), torch.tensor(0.0)))
            norms[f"{where}/{name}"] = norm.item()
        norms[f"value/{name}"] = loss.item()
    return norms


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", default="", help="checkpoint; empty = the model at initialisation")
    parser.add_argument("--batches", type=positive_int, default=4)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = parser.parse_args()

    cfg, model = load_cpu_model(args.config_file, args.opts, args.weights, num_workers=0)
    model.train()
    loader = iter(build_grounding_train_loader(cfg, GroundingDatasetMapper(cfg, is_train=True)))
    totals = {}
    for _ in range(args.batches):
        for key, value in gradient_norms(model, next(loader)).items():
            totals.setdefault(key, []).append(value)
    print(json.dumps({k: sum(v) / len(v) for k, v in totals.items()}, indent=1))

if __name__ == "__main__":
    main()

"""Can the X-VLM text-to-box head learn from GLIP's fused features? A probe on frozen features.

1. ``cache``: run a trained model (its OUTPUT_DIR with config.yaml and model_final.pth, e.g. the
   ``heads`` run of scripts/glipv2_xvlm_table.sh) over the shapes referring expressions and store
   what the text-to-box head receives: the fused levels, the fused text tokens, the image size and
   the referred box.
2. ``train``: train a fresh ``XVLMBoxHead`` alone on the cached training expressions (AdamW,
   lr 1e-3, batch 8) and print Acc@IoU 0.5 on the cached val expressions at a few step counts.

    python benchmarks/text_box_head_probe.py cache output/xvlm_table625/heads --out /tmp/tb
    python benchmarks/text_box_head_probe.py train --cache /tmp/tb --position-in values --steps 1000

Results: docs/glipv2_xvlm.md ("Why the text-to-box head stayed at the mean box"). CPU, minutes.
"""
import argparse
import os
import time

import torch
from torchvision.ops import box_iou


def cache(run_dir: str, out: str, max_train: int):
    from common import load_trained_run
    from detectron2.data import DatasetCatalog, build_detection_test_loader

    # the head runs on every caption input
    cfg, model = load_trained_run(run_dir, ["MODEL.GLIP.TEXT_BOX_HEAD.PREDICT", "True"])
    seen = []
    model.text_box_head.register_forward_hook(lambda m, args, o: seen.append(args))
    os.makedirs(out, exist_ok=True)
    for split, limit in (("shapes_refexp_val", None), ("shapes_refexp_train", max_train)):
        records = {r["image_id"]: r for r in DatasetCatalog.get(split)}
        data = []
        for batch in build_detection_test_loader(cfg, split):
            if limit is not None and len(data) >= limit:
                break
            seen.clear()
            with torch.no_grad():
                model(batch)
            rows = [(args, j) for args in seen for j in range(args[1].shape[0])]
            for ((visual, text, mask, sizes), j), x in zip(rows, batch):
                x0, y0, w, h = records[x["image_id"]]["annotations"][0]["bbox"]
                data.append(dict(visual=[v[j].half() for v in visual], text=text[j, : int(mask[j].sum())],
                                 size=tuple(sizes[j]), box=torch.tensor([x0, y0, x0 + w, y0 + h])))
        torch.save(data, os.path.join(out, f"{split}.pt"))
        print(f"{split}: {len(data)} expressions cached", flush=True)


def _batch(items):
    visual = [torch.stack([it["visual"][lvl] for it in items]).float() for lvl in range(len(items[0]["visual"]))]
    width = max(it["text"].shape[0] for it in items)
    text = torch.zeros(len(items), width, items[0]["text"].shape[1])
    mask = torch.zeros(len(items), width, dtype=torch.bool)
    for i, it in enumerate(items):
        text[i, : it["text"].shape[0]] = it["text"]
        mask[i, : it["text"].shape[0]] = True
    sizes = [it["size"] for it in items]
    scale = torch.tensor([[w, h, w, h] for h, w in sizes], dtype=torch.float32)
    return visual, text, mask, sizes, torch.stack([it["box"] for it in items]).float(), scale


def train(cache_dir: str, position_in: str, steps: int, seed: int, report=(300, 1000, 2000, 3000)):
    from glip_d2.modeling.heads.text_box import XVLMBoxHead, cxcywh_to_xyxy, text_box_losses, xyxy_to_cxcywh

    train_set = torch.load(os.path.join(cache_dir, "shapes_refexp_train.pt"), weights_only=True)
    val_set = torch.load(os.path.join(cache_dir, "shapes_refexp_val.pt"), weights_only=True)
    torch.manual_seed(seed)
    head = XVLMBoxHead(channels=train_set[0]["visual"][0].shape[0], language_dim=train_set[0]["text"].shape[1],
                       position_in=position_in)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)

    def accuracy():
        head.eval()
        hits = 0
        with torch.no_grad():
            for s in range(0, len(val_set), 64):
                visual, text, mask, sizes, boxes, scale = _batch(val_set[s : s + 64])
                pred = cxcywh_to_xyxy(head(visual, text, mask, sizes)) * scale
                hits += int((box_iou(pred, boxes).diag() >= 0.5).sum())
        head.train()
        return 100.0 * hits / len(val_set)

    start = time.time()
    for step in range(1, steps + 1):
        index = torch.randint(len(train_set), (8,), generator=gen).tolist()
        visual, text, mask, sizes, boxes, scale = _batch([train_set[i] for i in index])
        losses = text_box_losses(head(visual, text, mask, sizes), xyxy_to_cxcywh(boxes / scale))
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in report or step == steps:
            print(f"position_in={position_in} seed={seed} step {step} ({8 * step} expressions): "
                  f"loss {loss.item():.3f}, val Acc@0.5 {accuracy():.1f} ({time.time() - start:.0f} s)", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cache", help="store the head's inputs from a trained model")
    c.add_argument("run_dir")
    c.add_argument("--out", default="output/text_box_probe")
    c.add_argument("--max-train", type=int, default=960)
    t = sub.add_parser("train", help="train a fresh head on the cache")
    t.add_argument("--cache", default="output/text_box_probe")
    t.add_argument("--position-in", default="values", choices=("values", "keys"))
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "cache":
        cache(args.run_dir, args.out, args.max_train)
    else:
        train(args.cache, args.position_in, args.steps, args.seed)


if __name__ == "__main__":
    main()

"""Is there an image-text matching signal in GLIP's fused features? A probe on frozen features.

X-VLM's ITM head reads the fused [CLS] token; in glip_d2 the fusion tower is the cross-modal
encoder. With `shift` negatives every caption of a batch is a positive (with its own image) and a
negative (with another image), so only what the *image* changes in the fused [CLS] can tell the
two apart.

1. ``cache``: run a trained model (its OUTPUT_DIR with config.yaml and model_final.pth, e.g. the
   ``heads`` run of scripts/glipv2_xvlm_table.sh) over the shapes referring expressions in groups
   of 8. Each image meets its own expression (matched) and the group's next different expression
   (mismatched, as ITM's ``shift`` negatives). Stored per pair: the fused [CLS], the per-word
   maximum grounding logit over all anchors, the label, and whether
   the mismatched expression's shape words name an object of that image anyway (a negative that
   is not one). The size of the image's effect on the fused [CLS] is printed.
2. ``train``: fit probes on the cached training pairs and print their val accuracy: a fresh
   ``ImageTextMatchingHead`` on the fused [CLS] (what ``loss_itm`` trains), as it is and after a
   BatchNorm1d (with the gradient such a norm would send into the tower at initialisation), and
   logistic regressions fitted to convergence on the fused [CLS] and on three numbers from the
   grounding logits (mean, min and max over the words of each word's best-anchor logit).

    python benchmarks/itm_probe.py cache output/xvlm_table625/heads --out /tmp/itm
    python benchmarks/itm_probe.py train --cache /tmp/itm --steps 2000

Results: docs/glipv2_xvlm.md ("Why ITM stays at chance"). CPU, minutes.
"""
import argparse
import os
import re
import time

import torch
import torch.nn.functional as F

GROUP = 8


def _shape_words(expression: str):
    """(colour or None, shape or None) of an expression's target, from its words."""
    m = re.match(r"the (?:small |large )?(\w+)(?: (\w+))?", expression)
    a, b = m.groups()
    if b is None or b in ("to", "above", "below"):
        return None, a
    return (a, None) if b == "object" else (a, b)


def _names(objects, words):
    colour, shape = words
    return any((colour is None or c == colour) and (shape is None or s == shape) for c, s in objects)


def cache(run_dir: str, out: str, max_train: int):
    from common import load_trained_run
    from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader

    cfg, model = load_trained_run(run_dir)
    os.makedirs(out, exist_ok=True)
    for split, limit in (("shapes_refexp_val", None), ("shapes_refexp_train", max_train)):
        base = split.replace("refexp_", "")
        names = MetadataCatalog.get(base).thing_classes
        objects = {r["image_id"]: [tuple(names[a["category_id"]].split(" ")) for a in r["annotations"]]
                   for r in DatasetCatalog.get(base)}
        pairs, group, image_effect, text_effect = [], [], [], []
        for batch in build_detection_test_loader(cfg, split):
            group += batch
            if len(group) < GROUP:
                continue
            with torch.no_grad():
                pairs += _pairs(model, group, objects, image_effect, text_effect)
            group = []
            if limit is not None and len(pairs) >= 2 * limit:
                break
        torch.save(pairs, os.path.join(out, f"{split}.pt"))
        wrong = sum(p["label"] == 0 and p["names_an_object"] for p in pairs)
        print(f"{split}: {len(pairs)} pairs cached; {wrong} of {len(pairs) // 2} mismatched "
              f"expressions name a shape of the image anyway", flush=True)
        print(f"  fused [CLS] norm {torch.stack([p['cls'] for p in pairs]).float().norm(dim=1).mean():.2f}; "
              f"other image, same expression: moves it by {torch.tensor(image_effect).mean():.3f}; "
              f"same image, other expression: by {torch.tensor(text_effect).mean():.3f}", flush=True)


def _pairs(model, group, objects, image_effect, text_effect):
    from glip_d2.modeling.heads.itm import shifted_negatives

    captions = [x["caption"] for x in group]
    picks = shifted_negatives(captions)
    feats = model.extract_features(model.preprocess_image(group))
    _, lang = model.encode_text(captions)
    matched = model.head(feats, lang)
    other = [j if j is not None else k for k, j in enumerate(picks)]
    mismatched = model.head(feats, {k: v[other] for k, v in lang.items()})
    rows = []
    for label, out, texts in ((1, matched, list(range(len(group)))), (0, mismatched, other)):
        logits = torch.cat(out["token_logits"], dim=1).float().amax(dim=1)  # (B, T)
        for k, x in enumerate(group):
            if label == 0 and picks[k] is None:
                continue
            words = int(out["text_mask"][k].sum()) - 1  # [CLS] w1 .. wn [SEP]
            rows.append(dict(
                cls=out["text"][k, 0].half(), word_logits=logits[k, 1:words], label=label,
                names_an_object=_names(objects[x["original_id"]], _shape_words(captions[texts[k]])),
            ))
    for k, j in enumerate(picks):
        if j is not None:
            image_effect.append(float((mismatched["text"][k, 0] - matched["text"][j, 0]).norm()))
            text_effect.append(float((mismatched["text"][k, 0] - matched["text"][k, 0]).norm()))
    return rows


def _alignment_features(pairs):
    return torch.stack([torch.stack([p["word_logits"].mean(), p["word_logits"].min(), p["word_logits"].max()])
                        for p in pairs])


def train(cache_dir: str, steps: int, seed: int, lr: float):
    from glip_d2.modeling.heads.itm import ImageTextMatchingHead

    train_set = torch.load(os.path.join(cache_dir, "shapes_refexp_train.pt"), weights_only=True)
    val_set = torch.load(os.path.join(cache_dir, "shapes_refexp_val.pt"), weights_only=True)
    labels = {n: torch.tensor([p["label"] for p in s]) for n, s in (("train", train_set), ("val", val_set))}
    true_neg = torch.tensor([not (p["label"] == 0 and p["names_an_object"]) for p in val_set])
    print(f"{len(train_set)} training pairs, {len(val_set)} val pairs "
          f"({int((~true_neg).sum())} val negatives name a shape of their image)")

    positive = labels["val"] == 1

    def report(name, pred):
        hit = (pred == labels["val"]).float()
        print(f"  {name}: val accuracy {100 * hit.mean():.1f} %; right on {100 * hit[positive].mean():.1f} % "
              f"of the matched pairs, {100 * hit[~positive & true_neg].mean():.1f} % of the mismatched ones "
              f"that name no shape of their image, {100 * hit[~true_neg].mean():.1f} % of the others",
              flush=True)

    # 1. the ITM head on the fused [CLS], as X-VLM builds it and after a BatchNorm1d
    cls = {"train": torch.stack([p["cls"] for p in train_set]).float(),
           "val": torch.stack([p["cls"] for p in val_set]).float()}
    dim = cls["train"].shape[1]
    print(f"per-channel std of the fused [CLS] over the training pairs: median "
          f"{cls['train'].std(0).median():.4f}")
    for input_norm in (False, True):
        torch.manual_seed(seed)
        head = ImageTextMatchingHead(dim)
        if input_norm:
            head = torch.nn.Sequential(torch.nn.BatchNorm1d(dim), head)
        gen = torch.Generator().manual_seed(seed)
        # what the tower would receive: d loss / d fused [CLS] at initialisation, batch of 8
        index = torch.randint(len(train_set), (8,), generator=gen)
        x = cls["train"][index].clone().requires_grad_(True)
        F.cross_entropy(head(x), labels["train"][index]).backward()
        head.zero_grad()
        print(f"BatchNorm first: {input_norm}. Gradient into the fused [CLS] at initialisation "
              f"(norm over a batch of 8): {x.grad.norm():.3f}")
        optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
        start = time.time()
        for step in range(1, steps + 1):
            index = torch.randint(len(train_set), (16,), generator=gen)
            loss = F.cross_entropy(head(cls["train"][index]), labels["train"][index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step in (500, 2000) or step == steps:
                head.eval()
                with torch.no_grad():
                    train_loss = F.cross_entropy(head(cls["train"]), labels["train"]).item()
                    pred = head(cls["val"]).argmax(dim=1)
                head.train()
                print(f"  step {step}: train loss {train_loss:.3f} ({time.time() - start:.0f} s)")
                report("ITM head", pred)

    # 2. logistic regressions fitted to convergence: on the fused [CLS], on the grounding logits
    for name, x in (("the fused [CLS]", cls),
                    ("(mean, min, max) of the words' best grounding logits",
                     {"train": _alignment_features(train_set), "val": _alignment_features(val_set)})):
        train_loss, pred = _logistic_regression(x["train"], labels["train"], x["val"])
        print(f"logistic regression (L-BFGS) on {name}: train loss {train_loss:.3f}")
        report("logistic regression", pred)


def _logistic_regression(x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor):
    """Fit on standardised features; returns the training loss and the val predictions."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, x_val = (x - mean) / std, (x_val - mean) / std
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=2000, tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y.float())
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return F.binary_cross_entropy_with_logits(x @ w + b, y.float()).item(), (x_val @ w + b > 0).long()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cache", help="store matched and mismatched pairs' features from a trained model")
    c.add_argument("run_dir")
    c.add_argument("--out", default="output/itm_probe")
    c.add_argument("--max-train", type=int, default=960)
    t = sub.add_parser("train", help="fit the probes on the cache")
    t.add_argument("--cache", default="output/itm_probe")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "cache":
        cache(args.run_dir, args.out, args.max_train)
    else:
        train(args.cache, args.steps, args.seed, args.lr)


if __name__ == "__main__":
    main()

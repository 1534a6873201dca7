#!/usr/bin/env python
"""Name accuracy at ATSS positives of a trained one-stage GLIP on a detection dataset.

    python tools/name_accuracy.py --config-file configs/demo_glip_tiny_shapes.yaml \
        --weights output/demo_shapes/model_final.pth --dataset shapes_train --num-images 200

Prints the fraction of ATSS-positive anchors whose top-scored name (all names of the
dataset's test vocabulary in one prompt, scored as at inference) is their box's name, per
pyramid level, and for colour-shape names ("red circle") the colour and shape accuracy.
"""
import argparse
import json

import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from glip_d2 import add_glip_config
from glip_d2.checkpoint import GLIPCheckpointer
from glip_d2.data.datasets import register_datasets_from_config
from glip_d2.evaluation.name_accuracy import name_accuracy_at_positives


def positive_int(text: str) -> int:
    """argparse type of a count: an integer of at least 1 (0 or less stopped the tools with a
    traceback, or, as a slice end, silently left images out)."""
    value = int(text)  # a ValueError is argparse's "invalid positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def load_cpu_model(config_file: str, opts, weights: str = "", num_workers: int = None):
    """(cfg, model) on the CPU from a config file and overrides, with `weights` loaded (empty =
    the model at initialisation, seeded), and the config's DATASETS.CUSTOM / CAPTIONS /
    PSEUDO_LABELS registered as train_net.py does. Shared by the diagnostics in tools/."""
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    register_datasets_from_config(cfg)  # else a dataset of the config is "not registered"
    cfg.MODEL.DEVICE = "cpu"
    if num_workers is not None:
        cfg.DATALOADER.NUM_WORKERS = num_workers
    torch.manual_seed(0)
    model = build_model(cfg)
    if weights:
        GLIPCheckpointer(model).load(weights)
    return cfg, model


def load_inputs(cfg, dataset: str, num_images: int):
    """Test-size inputs with gt boxes and the name of every box."""
    dicts = DatasetCatalog.get(dataset)[:num_images]
    names = MetadataCatalog.get(dataset).thing_classes
    augs = T.AugmentationList(utils.build_augmentation(cfg, is_train=False))
    inputs, gt_names = [], []
    for d in dicts:
        image = utils.read_image(d["file_name"], format=cfg.INPUT.FORMAT)
        aug = T.AugInput(image)
        tfm = augs(aug)
        # boxes only: the shapes json also carries RLE masks, which name accuracy does not need
        annos = [
            utils.transform_instance_annotations(
                {k: v for k, v in a.items() if k != "segmentation"}, tfm, aug.image.shape[:2]
            )
            for a in d["annotations"]
        ]
        inst = utils.annotations_to_instances(annos, aug.image.shape[:2])
        inputs.append({"image": torch.as_tensor(aug.image.transpose(2, 0, 1).copy()), "instances": inst})
        gt_names.append([names[c] for c in inst.gt_classes.tolist()])
    return inputs, gt_names


def linear_probe(features: torch.Tensor, labels: torch.Tensor, train_fraction: float = 0.7) -> float:
    """Held-out accuracy of a softmax regression from features to labels: can a linear read-out
    of these features name the boxes at all?"""
    n = int(len(labels) * train_fraction)
    mean, std = features[:n].mean(0), features[:n].std(0) + 1e-6
    x = (features - mean) / std
    num_classes = int(labels.max()) + 1
    layer = torch.nn.Linear(x.shape[1], num_classes)
    opt = torch.optim.LBFGS(layer.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(x[:n]), labels[:n]) + 1e-3 * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (layer(x[n:]).argmax(1) == labels[n:]).float().mean().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", default="", help="checkpoint; empty = the model at initialisation")
    parser.add_argument("--dataset", default="shapes_train")
    parser.add_argument("--vocabulary-from", default="shapes_val_novel",
                        help="dataset whose thing_classes form the prompt (all 25 shapes names)")
    parser.add_argument("--num-images", type=positive_int, default=200)
    parser.add_argument("--batch", type=positive_int, default=16)
    parser.add_argument("--probe", action="store_true",
                        help="also fit a linear classifier of the name on the tower features at "
                             "positives (first 70%% of the images) and report its held-out accuracy")
    parser.add_argument("--json", default="", help="also write the numbers to this file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = parser.parse_args()

    cfg, model = load_cpu_model(args.config_file, args.opts, args.weights)
    vocabulary = MetadataCatalog.get(args.vocabulary_from).thing_classes
    inputs, gt_names = load_inputs(cfg, args.dataset, args.num_images)
    preds, gts, levels, feats, fpn = [], [], [], [], []
    for s in range(0, len(inputs), args.batch):
        r = name_accuracy_at_positives(model, inputs[s : s + args.batch], vocabulary, gt_names[s : s + args.batch])
        preds.append(r["pred"]), gts.append(r["gt"]), levels.append(r["level"]), feats.append(r["features"]), fpn.append(r["fpn_features"])
    pred, gt, level = torch.cat(preds), torch.cat(gts), torch.cat(levels)
    result = {"dataset": args.dataset, "num_positives": len(gt),
              "name_accuracy": (pred == gt).float().mean().item()}
    for lvl in level.unique().tolist():
        m = level == lvl
        result[f"name_accuracy_P{lvl + 3}"] = (pred[m] == gt[m]).float().mean().item()
        result[f"positives_P{lvl + 3}"] = int(m.sum())
    words = [v.split() for v in vocabulary]
    if all(len(w) == 2 for w in words):  # colour-shape names
        for part, name in ((0, "colour"), (1, "shape")):
            same = [words[p][part] == words[g][part] for p, g in zip(pred.tolist(), gt.tolist())]
            result[f"{name}_accuracy"] = sum(same) / max(len(same), 1)
    if args.probe:
        for where, x in (("tower", torch.cat(feats)), ("fpn", torch.cat(fpn))):
            result[f"probe_{where}_name_accuracy"] = linear_probe(x, gt)
            if all(len(w) == 2 for w in words):
                for part, name in ((0, "colour"), (1, "shape")):
                    values = sorted({w[part] for w in words})
                    labels = torch.as_tensor([values.index(words[g][part]) for g in gt.tolist()])
                    result[f"probe_{where}_{name}_accuracy"] = linear_probe(x, labels)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

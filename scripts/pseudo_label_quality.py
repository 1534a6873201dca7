"""Quality of shapes pseudo-labels against the human boxes of the same images.

    python scripts/pseudo_label_quality.py output/pseudo_shapes/pseudo_labels.json \\
        datasets/shapes/annotations/train.json [--min-score 0.05 0.1 0.2]

With --min-score, one line per threshold: only the pseudo boxes scoring at least that count (a
run at a low --score-thresh read at higher ones; its top boxes per phrase are kept the same way).

A pseudo box is correct when it overlaps a human box of that image with IoU >= 0.5 and its phrase
names that box's colour and shape ("a small blue cross" names "blue cross"); a human box is covered
when some correct pseudo box matches it. Images are paired by file name, and only the human boxes
of the pseudo-labelled images count (a run over part of the images is measured on that part).
"""
import collections
import json
import sys


def iou(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / (aw * ah + bw * bh - inter)


def main(pseudo_json, human_json, thresholds=(None,)):
    human = json.load(open(human_json))
    pseudo = json.load(open(pseudo_json))
    names = {c["id"]: c["name"].split() for c in human["categories"]}
    human_id = {im["file_name"]: im["id"] for im in human["images"]}
    # the images are paired by file name (a collection without the dataset's ids numbers its
    # images afresh), and only the labelled images' human boxes count (a shard, a subset)
    missing = [im["file_name"] for im in pseudo["images"] if im["file_name"] not in human_id]
    if missing:
        sys.exit(f"{pseudo_json}: {len(missing)} images are not in {human_json} "
                 f"(first: {missing[0]}); compare pseudo-labels with the json of the same images.")
    to_human = {im["id"]: human_id[im["file_name"]] for im in pseudo["images"]}
    labelled = set(to_human.values())
    boxes = collections.defaultdict(list)
    for a in human["annotations"]:
        if a["image_id"] in labelled:
            boxes[a["image_id"]].append(a)
    captions = {im["id"]: im["caption"] for im in pseudo["images"]}
    n_human = sum(map(len, boxes.values()))
    for min_score in thresholds:
        kept = [a for a in pseudo["annotations"] if min_score is None or a["score"] >= min_score]
        correct, covered = 0, set()
        for a in kept:
            (start, end), = a["tokens_positive"]
            phrase = captions[a["image_id"]][start:end]
            hits = [
                h["id"] for h in boxes[to_human[a["image_id"]]]
                if iou(a["bbox"], h["bbox"]) >= 0.5 and all(w in phrase for w in names[h["category_id"]])
            ]
            correct += bool(hits)
            covered.update(hits)
        at = "" if min_score is None else f"score >= {min_score}: "
        print(f"{at}pseudo boxes {len(kept)}: {correct} correct ({100 * correct / max(len(kept), 1):.1f}%); "
              f"human boxes covered {len(covered)}/{n_human} ({100 * len(covered) / max(n_human, 1):.1f}%)")


if __name__ == "__main__":
    args = sys.argv[1:]
    thresholds = [None]
    if "--min-score" in args:
        at = args.index("--min-score")
        thresholds = [float(v) for v in args[at + 1:]]
        args = args[:at]
    main(*args[:2], thresholds=thresholds)

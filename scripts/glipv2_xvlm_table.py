"""Print issue 14's table from the runs of scripts/glipv2_xvlm_table.sh (markdown)."""
import json
import os
import re
import sys


def last_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        return {}
    rows = [json.loads(line) for line in open(path) if "bbox/AP" in line]
    return rows[-1] if rows else {}


def refexp_acc(log, names=("shapes_refexp_val", "shapes_refexp_val_novel")):
    """Acc@1 per refexp split from an --eval-only log: Detectron2's "copypaste" lines, one
    block per dataset of DATASETS.TEST, in that order."""
    if not os.path.isfile(log):
        return {}
    values = re.findall(r"copypaste: Task: refexp\n.*?copypaste: Acc@1,.*?\n.*?copypaste: ([\d.]+),", open(log).read())
    return {name: float(v) for name, v in zip(names, values)}


def fmt(v):
    return "—" if v is None else f"{v:.1f}"


root = sys.argv[1] if len(sys.argv) > 1 else "output/glipv2_xvlm"
print("| run | seen AP | seen AP50 | novel AP | novel AP50 | segm AP seen | segm AP novel |")
print("|---|---|---|---|---|---|---|")
ORDER = ("grounding", "contrastive", "mlm", "both", "refexp", "masks", "heads", "itc", "itm")


def sweep(prefix):
    """The weight sweep of one loss (contrastive_0.1, itc_0.1, ...), by weight."""
    names = os.listdir(root) if os.path.isdir(root) else []
    return sorted((d for d in names if re.fullmatch(re.escape(prefix) + r"_[\d.]+", d)),
                  key=lambda d: float(d.split("_", 1)[1]))


# each sweep follows the run of its loss at weight 1
runs = [r for name in ORDER for r in (name, *sweep(name))]
for run in runs:
    m = last_metrics(os.path.join(root, run))
    if not m:
        continue
    print(f"| {run} | {fmt(m.get('shapes_val/bbox/AP'))} | {fmt(m.get('shapes_val/bbox/AP50'))} | "
          f"{fmt(m.get('shapes_val_novel/bbox/AP'))} | {fmt(m.get('shapes_val_novel/bbox/AP50'))} | "
          f"{fmt(m.get('shapes_val/segm/AP'))} | {fmt(m.get('shapes_val_novel/segm/AP'))} |")
for run in ("heads", "itc", *sweep("itc"), "itm"):
    for predict, what in (("False", "GLIP top-1 grounded box"), ("True", "X-VLM text-to-box head")):
        acc = refexp_acc(os.path.join(root, run, f"refexp_predict_{predict}.log"))
        if acc:
            print(f"\n{run}: refexp Acc@1, {what}: val {fmt(acc.get('shapes_refexp_val'))}, "
                  f"val_novel {fmt(acc.get('shapes_refexp_val_novel'))}")

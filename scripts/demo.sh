#!/usr/bin/env bash
# Main job: install everything (first run only), generate the shapes dataset, train the demo GLIP
# on CPU and print COCO AP on seen (shapes_val) and never-seen (shapes_val_novel) combinations.
source "$(dirname "$0")/env.sh"
OUT=${OUT:-output/demo_shapes}
.venv/bin/python train_net.py --config-file configs/demo_glip_tiny_shapes.yaml OUTPUT_DIR "$OUT" "$@"
.venv/bin/python - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.json") if "bbox/AP" in l]
last = rows[-1]
for split in ("shapes_val", "shapes_val_novel"):
    print(f"{split:18s} AP {last[split + '/bbox/AP']:.1f}  AP50 {last[split + '/bbox/AP50']:.1f}")
PY

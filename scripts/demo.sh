#!/usr/bin/env bash
# Main job: install everything (first run only), generate the shapes dataset, train the demo GLIP
# on CPU and print COCO AP on seen (shapes_val) and never-seen (shapes_val_novel) combinations.
source "$(dirname "$0")/env.sh"
OUT=${OUT:-output/demo_shapes}
note_fresh_start "$OUT" "$0" "$@"
# flags first (--resume, --num-gpus N), then KEY VALUE config overrides
.venv/bin/python train_net.py --config-file configs/demo_glip_tiny_shapes.yaml "$@" OUTPUT_DIR "$OUT"
.venv/bin/python scripts/print_ap.py "$OUT"

#!/usr/bin/env bash
# Two-stage demo: train the language-aware Faster R-CNN on the shapes dataset on CPU and print COCO
# AP on seen (shapes_val) and never-seen (shapes_val_novel) combinations (about 15 min on 2 cores).
source "$(dirname "$0")/env.sh"
OUT=${OUT:-output/demo_two_stage_shapes}
note_fresh_start "$OUT" "$0" "$@"
# flags first (--resume, --num-gpus N), then KEY VALUE config overrides
.venv/bin/python train_net.py --config-file configs/two_stage/demo_faster_rcnn_shapes.yaml "$@" OUTPUT_DIR "$OUT"
.venv/bin/python scripts/print_ap.py "$OUT"

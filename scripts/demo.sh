#!/usr/bin/env bash
# Main job: install everything (first run only), generate the shapes dataset, train the demo GLIP
# on CPU and print COCO AP on seen (shapes_val) and never-seen (shapes_val_novel) combinations.
source "$(dirname "$0")/env.sh"
OUT=${OUT:-output/demo_shapes}
if [ -f "$OUT/last_checkpoint" ] && [[ " $* " != *" --resume "* ]]; then
  echo "Note: $OUT holds an earlier run's checkpoints; this run starts afresh and overwrites" \
       "them (bash $0 --resume continues that run)." >&2
fi
# flags first (--resume, --num-gpus N), then KEY VALUE config overrides
.venv/bin/python train_net.py --config-file configs/demo_glip_tiny_shapes.yaml "$@" OUTPUT_DIR "$OUT"
.venv/bin/python scripts/print_ap.py "$OUT"

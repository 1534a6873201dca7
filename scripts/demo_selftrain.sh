#!/usr/bin/env bash
# Self-training demo: the two-stage demo teacher (scripts/demo_two_stage.sh; trained first if its
# checkpoint is missing) grounds the noun phrases of the shapes training captions; a student is
# trained from scratch on those pseudo-labels only and evaluated like the teacher.
set -e
source "$(dirname "$0")/env.sh"
TEACHER=${TEACHER:-output/demo_two_stage_shapes/model_final.pth}
PSEUDO=${PSEUDO:-output/pseudo_shapes}
OUT=${OUT:-output/demo_student_shapes}
# the shapes data live under the datasets root like every dataset (generated there on first use)
export SHAPES="${DETECTRON2_DATASETS:-datasets}/shapes"
if [ ! -f "$TEACHER" ]; then
  bash scripts/demo_two_stage.sh OUTPUT_DIR "$(dirname "$TEACHER")"
fi
# the shapes data are generated on first use; the collection keeps only file names and captions
.venv/bin/python - <<'PY'
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
import glip_d2  # noqa: F401  (registers the shapes splits)
from glip_d2.selftrain import write_caption_collection

DatasetCatalog.get("shapes_train")
meta = MetadataCatalog.get("shapes_train")
out = os.path.join(os.environ["SHAPES"], "train_captions.jsonl")
n = write_caption_collection(meta.json_file, out)
print(f"{n} captioned images -> {out}")
PY
.venv/bin/python -m glip_d2.pseudo_label \
  --config-file configs/two_stage/demo_faster_rcnn_shapes.yaml --weights "$TEACHER" \
  --input "$SHAPES/train_captions.jsonl" --image-root "$SHAPES/train" \
  --output-dir "$PSEUDO" --score-thresh 0.2 --max-boxes-per-phrase 3 --format both
.venv/bin/python scripts/pseudo_label_quality.py "$PSEUDO/pseudo_labels.json" \
  "$SHAPES/annotations/train.json"
.venv/bin/python train_net.py --config-file configs/two_stage/demo_faster_rcnn_shapes_student.yaml \
  DATASETS.PSEUDO_LABELS "[['shapes_train_pseudo', '$PSEUDO']]" OUTPUT_DIR "$OUT" "$@"
.venv/bin/python scripts/print_ap.py "$OUT"

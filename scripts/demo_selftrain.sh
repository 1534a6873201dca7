#!/usr/bin/env bash
# Self-training demo: a trained demo teacher (trained first if its checkpoint is missing) grounds
# the noun phrases of the shapes training captions; a student is trained from scratch on those
# pseudo-labels only and evaluated like the teacher.
#   TEACHER_KIND=two_stage (default): the language-aware Faster R-CNN of scripts/demo_two_stage.sh
#   TEACHER_KIND=one_stage:           the one-stage demo GLIP of scripts/demo.sh (GLIP's own recipe)
#   STUDENT=two_stage (default) | one_stage: the student's architecture (the same two demo models)
# TEACHER=<checkpoint>, PSEUDO=<dir>, OUT=<dir> override the defaults (relative paths start at the
# repository); extra args go to the student's training (flags such as --resume first, then KEY
# VALUE config overrides). Only the default teacher is trained when missing: a TEACHER given that
# does not exist is refused before anything runs.
set -e
TEACHER_KIND=${TEACHER_KIND:-two_stage}
STUDENT=${STUDENT:-two_stage}
case $TEACHER_KIND in
  two_stage) TEACHER_CONFIG=configs/two_stage/demo_faster_rcnn_shapes.yaml
             DEFAULT_TEACHER=output/demo_two_stage_shapes/model_final.pth
             TEACHER_TRAIN=scripts/demo_two_stage.sh
             TEACHER_ARGS=(--score-thresh 0.2)
             PSEUDO=${PSEUDO:-output/pseudo_shapes} ;;
  one_stage) TEACHER_CONFIG=configs/demo_glip_tiny_shapes.yaml
             DEFAULT_TEACHER=output/demo_shapes/model_final.pth
             TEACHER_TRAIN=scripts/demo.sh
             # a phrase scored by the MEAN of its tokens: the demo's MIN (right for class names
             # like "blue cross") scores "a small blue cross" by "a", and grounds 9 % of phrases
             TEACHER_ARGS=(--score-thresh 0.3 MODEL.ATSS.SCORE_AGG MEAN)
             PSEUDO=${PSEUDO:-output/pseudo_shapes_glip} ;;
  *) echo "TEACHER_KIND must be two_stage or one_stage, got '$TEACHER_KIND'" >&2; exit 2 ;;
esac
TEACHER=${TEACHER:-$DEFAULT_TEACHER}
# a checkpoint the caller named must be there: training the demo teacher into its folder would
# label with another model (or leave the named file missing until the pseudo-labeller fails)
if [ "$TEACHER" != "$DEFAULT_TEACHER" ] && ! (cd "$(dirname "$0")/.." && [ -f "$TEACHER" ]); then
  echo "TEACHER=$TEACHER: no such checkpoint (relative paths start at the repository). Give an" \
       "existing checkpoint, or leave TEACHER unset to use (and first train) $DEFAULT_TEACHER." >&2
  exit 2
fi
case $STUDENT in
  two_stage) STUDENT_CONFIG=configs/two_stage/demo_faster_rcnn_shapes_student.yaml ;;
  one_stage) STUDENT_CONFIG=configs/demo_glip_tiny_shapes_student.yaml ;;
  *) echo "STUDENT must be two_stage or one_stage, got '$STUDENT'" >&2; exit 2 ;;
esac
source "$(dirname "$0")/env.sh"
# each teacher writes its own pseudo-labels (PSEUDO above), each pairing trains into its own folder
if [ "$TEACHER_KIND/$STUDENT" = two_stage/two_stage ]; then OUT=${OUT:-output/demo_student_shapes}
else OUT=${OUT:-output/demo_student_shapes_${TEACHER_KIND}_to_${STUDENT}}; fi
# the shapes data live under the datasets root like every dataset (generated there on first use);
# one root for this script and every Python process it starts: empty means the default, and a
# leading "~" (which Python expands) the home folder
export DETECTRON2_DATASETS="${DETECTRON2_DATASETS:-datasets}"
case $DETECTRON2_DATASETS in "~"|"~/"*) DETECTRON2_DATASETS=$HOME${DETECTRON2_DATASETS#"~"} ;; esac
export SHAPES="${DETECTRON2_DATASETS:-datasets}/shapes"
if [ ! -f "$TEACHER" ]; then
  OUT="$(dirname "$TEACHER")" bash "$TEACHER_TRAIN"
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
  --config-file "$TEACHER_CONFIG" --weights "$TEACHER" \
  --input "$SHAPES/train_captions.jsonl" --image-root "$SHAPES/train" \
  --output-dir "$PSEUDO" --max-boxes-per-phrase 3 --format both "${TEACHER_ARGS[@]}"
.venv/bin/python scripts/pseudo_label_quality.py "$PSEUDO/pseudo_labels.json" \
  "$SHAPES/annotations/train.json"
# PSEUDO inside the Python string literal yacs reads: its backslashes and quotes escaped
bs='\' q="'"
pseudo_literal=${PSEUDO//"$bs"/"$bs$bs"}
pseudo_literal=${pseudo_literal//"$q"/"$bs$q"}
.venv/bin/python train_net.py --config-file "$STUDENT_CONFIG" "$@" \
  DATASETS.PSEUDO_LABELS "[['shapes_train_pseudo', '$pseudo_literal']]" OUTPUT_DIR "$OUT"
.venv/bin/python scripts/print_ap.py "$OUT"

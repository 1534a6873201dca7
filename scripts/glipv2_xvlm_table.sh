#!/usr/bin/env bash
# Issue 14's measurement table on the shapes data, one row per configuration at the same CPU
# budget (the demo config, ITERS iterations at batch 8 each):
#   grounding | + contrastive | + MLM | + both   -> seen / novel box AP
#   + mask head + X-VLM text-to-box head, with the referring expressions mixed into training
#                                               -> box AP, segm AP, refexp Acc@1 of GLIP's top-1
#                                                  grounded box vs the text-to-box head
#   + X-VLM ITC, + X-VLM ITM (each on top of the heads run: same data and heads, one loss more)
#                                               -> the same columns as the heads run
# Results: output/glipv2_xvlm/<run>/metrics.json and .../refexp_*.json; summary printed by
# scripts/glipv2_xvlm_table.py. Usage: ITERS=150 bash scripts/glipv2_xvlm_table.sh [run ...]
# contrastive_W (e.g. contrastive_0.3) is the contrastive run at CONTRASTIVE_WEIGHT W, and itc_W
# (e.g. itc_0.1) the itc run at ITC_WEIGHT W.
# EXTRA="KEY VALUE ..." appends overrides to every run (e.g. EXTRA="MODEL.ATSS.REGION_POOL 0").
# SEED=N fixes Detectron2's SEED (default -1: a fresh random seed per run, logged).
# The ablation of the heads run: refexp = grounding + the referring expressions in the training
# data (no extra head); masks = grounding + the mask head (no expressions, no text-to-box head).
source "$(dirname "$0")/env.sh"
ITERS=${ITERS:-150}
ROOT=${ROOT:-output/glipv2_xvlm}
PY=".venv/bin/python"
COMMON=(--config-file configs/demo_glip_tiny_shapes.yaml SOLVER.MAX_ITER "$ITERS"
        SOLVER.STEPS "($((ITERS * 4 / 5)),)" SOLVER.WARMUP_ITERS "$((ITERS / 10))"
        SOLVER.CHECKPOINT_PERIOD 1000000 SEED "${SEED:--1}" ${EXTRA:-})
REFEXP_TEST='("shapes_refexp_val", "shapes_refexp_val_novel")'
MASK_HEAD=(MODEL.MASK_ON True INPUT.MASK_FORMAT bitmask MODEL.ROI_MASK_HEAD.NUM_CONV 2
           MODEL.ROI_MASK_HEAD.CONV_DIM 64)
WITH_REFEXP=(DATASETS.TRAIN '("shapes_train", "shapes_refexp_train")')  # expressions in the data
runs=("$@")
[ ${#runs[@]} -eq 0 ] && runs=(grounding contrastive mlm both heads itc itm)
for run in "${runs[@]}"; do
  out="$ROOT/$run"
  case $run in
    grounding)   extra=() ;;
    contrastive) extra=(MODEL.GLIP.LOSSES.CONTRASTIVE_WEIGHT 1.0) ;;
    contrastive_*)  # the weight sweep: contrastive_0.1 trains with CONTRASTIVE_WEIGHT 0.1
                 extra=(MODEL.GLIP.LOSSES.CONTRASTIVE_WEIGHT "${run#contrastive_}") ;;
    mlm)         extra=(MODEL.GLIP.LOSSES.MLM_WEIGHT 1.0) ;;
    both)        extra=(MODEL.GLIP.LOSSES.CONTRASTIVE_WEIGHT 1.0 MODEL.GLIP.LOSSES.MLM_WEIGHT 1.0) ;;
    refexp)      extra=("${WITH_REFEXP[@]}") ;;
    masks)       extra=("${MASK_HEAD[@]}") ;;
    heads|itc|itm|itc_*)
                 extra=("${MASK_HEAD[@]}" MODEL.GLIP.TEXT_BOX_HEAD.NAME XVLMBoxHead "${WITH_REFEXP[@]}")
                 # ITC / ITM train on the referring expressions only (the mapper's detection
                 # prompts of shapes_train take no part; docs/glipv2_xvlm.md)
                 if [ "$run" = itc ]; then extra+=(MODEL.GLIP.LOSSES.ITC_WEIGHT 1.0); fi
                 if [[ "$run" == itc_* ]]; then extra+=(MODEL.GLIP.LOSSES.ITC_WEIGHT "${run#itc_}"); fi
                 if [ "$run" = itm ]; then extra+=(MODEL.GLIP.LOSSES.ITM_WEIGHT 1.0); fi ;;
    *) echo "unknown run $run" >&2; exit 1 ;;
  esac
  start=$(date +%s)
  $PY train_net.py "${COMMON[@]}" "${extra[@]}" OUTPUT_DIR "$out"
  echo "$run: $(( $(date +%s) - start )) s" >> "$ROOT/times.txt"
  if [[ "$run" =~ ^(heads|itc|itm|itc_.*)$ ]]; then
    for predict in False True; do
      $PY train_net.py --eval-only "${COMMON[@]}" "${extra[@]}" MODEL.WEIGHTS "$out/model_final.pth" \
        MODEL.GLIP.TEXT_BOX_HEAD.PREDICT $predict DATASETS.TEST "$REFEXP_TEST" \
        OUTPUT_DIR "$out/refexp_predict_$predict" 2>&1 | tee "$out/refexp_predict_$predict.log" | tail -3
    done
  fi
done
$PY scripts/glipv2_xvlm_table.py "$ROOT"

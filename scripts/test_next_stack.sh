#!/usr/bin/env bash
# The test suite on the newest stack: what the GPU machine runs (torch 2.1x, transformers 5,
# numpy 2), here on the CPU, in a second venv `.venv-next` (Python 3.11+, requirements-next.txt).
# Detectron2 there is sal-detectron2's pure-Python part: its compiled ops are built for CPython
# 3.10 and torch 2.3 only, so a stand-in module takes their place and raises when one is called
# (GLIP needs none of them; COCO AP then comes from pycocotools). Not part of CI: the first run
# installs about 6 GB, and the suite takes longer than on the verified stack.
#   bash scripts/test_next_stack.sh [pytest args, test paths]   PYTHON_NEXT=/path/to/python3.1x to choose
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv-next
PY=${PYTHON_NEXT:-$(command -v python3.11 || true)}
if [ -z "$PY" ] && command -v pyenv >/dev/null; then
  PY=$(pyenv root)/versions/$(pyenv versions --bare | grep -E '^3\.1[1-9]\.' | head -1)/bin/python
fi
if [ -z "$PY" ] || [ ! -x "$PY" ]; then
  echo "No Python 3.11 or newer found; set PYTHON_NEXT=/path/to/python3.11 (or newer)." >&2
  exit 1
fi
[ -x "$V/bin/python" ] || "$PY" -m venv "$V"
stamp="$V/.glip_d2_installed"
want=$(cat requirements-next.txt scripts/test_next_stack.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$V/bin/python" -m pip install -q --upgrade pip
  "$V/bin/python" -m pip install -q -r requirements-next.txt
  site="$PWD/$V/detectron2_site"
  rm -rf "$site" && mkdir -p "$site/whl"
  "$V/bin/python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 \
    --implementation cp --platform linux_x86_64 --platform manylinux2014_x86_64 \
    -d "$site/whl" sal-detectron2==0.7.2
  "$V/bin/python" -m zipfile -e "$site"/whl/*.whl "$site"
  rm -rf "$site/whl" "$site"/detectron2/_C.*.so
  cat > "$site/detectron2/_C.py" <<'PY'
"""Stand-in for Detectron2's compiled ops, which were built for another Python and torch.

Calling any op raises. The two version queries of Detectron2's environment report answer, so
that train_net.py's default_setup runs; the GPU machine's stand-in raises there too.
"""


def get_compiler_version():
    return "none (Detectron2's compiled ops are not built for this Python)"


get_cuda_version = get_compiler_version


def __getattr__(name):
    def _missing(*args, **kwargs):
        raise RuntimeError(f"detectron2._C.{name} is not built for this Python and torch")

    return _missing
PY
  purelib=$("$V/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$site" > "$purelib/detectron2_site.pth"
  echo "$want" > "$stamp"
fi
"$V/bin/python" -c 'import detectron2, numpy, torch, transformers; print("next stack: torch",
  torch.__version__, "| transformers", transformers.__version__, "| numpy", numpy.__version__)'
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# the whole tests folder, unless the arguments name test files or folders
where=tests
for a in "$@"; do [ -e "${a%%::*}" ] && where=; done
"$V/bin/python" -m pytest $where -q -p no:cacheprovider "$@"

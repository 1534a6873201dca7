# Sourced by the set-up scripts: create .venv (Python 3.10) and install the verified stack once.
# Idempotent: re-installs only when requirements.txt or setup.py changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-$(command -v python3.10 || true)}
if [ -z "$PY" ] && command -v pyenv >/dev/null; then PY=$(pyenv root)/versions/$(pyenv versions --bare | { grep '^3\.10' || true; } | tail -1)/bin/python; fi
if [ -z "$PY" ] || [ ! -x "$PY" ]; then
  echo "Python 3.10 not found (needed by the pinned torch 2.3 / sal-detectron2 stack). Install it or set PYTHON=/path/to/python3.10." >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.glip_d2_installed"
want=$(cat requirements.txt setup.py | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# note_fresh_start OUT SCRIPT ARGS...: tell the demo scripts' user that a run without --resume
# overwrites the checkpoints an earlier run left in OUT
note_fresh_start() {
  local out=$1 script=$2
  shift 2
  if [ -f "$out/last_checkpoint" ] && [[ " $* " != *" --resume "* ]]; then
    echo "Note: $out holds an earlier run's checkpoints; this run starts afresh and overwrites" \
         "them (bash $script --resume continues that run)." >&2
  fi
}

#!/usr/bin/env bash
# Install everything (first run only) and run the test suite, one pytest-xdist worker per core
# (at most 4; GLIP_D2_TEST_WORKERS=N sets it, 0 runs everything in this process).
source "$(dirname "$0")/env.sh"
workers=${GLIP_D2_TEST_WORKERS:-$(n=$(nproc 2>/dev/null || echo 1); echo $((n < 4 ? n : 4)))}
if [ "$workers" -gt 1 ]; then
  # --heavy-first (tests/conftest.py): the long tests go out first, so no worker ends alone on one
  .venv/bin/python -m pytest tests -q -n "$workers" --heavy-first "$@"
else
  .venv/bin/python -m pytest tests -q "$@"
fi

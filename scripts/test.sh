#!/usr/bin/env bash
# Install everything (first run only) and run the test suite.
source "$(dirname "$0")/env.sh"
.venv/bin/python -m pytest tests -q "$@"

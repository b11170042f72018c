#!/usr/bin/env bash
# Set up the virtual environment (once) and run WeCare with embedded defaults
# (SQLite + files in ./wecare-data, bundled weights, DICOM port 11112, dashboard 127.0.0.1:8000).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q -e .
exec .venv/bin/wecare serve "$@"

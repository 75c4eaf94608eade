#!/usr/bin/env bash
# Device check (needs a CUDA GPU): a short search and apply with --device cuda, asserting that the
# models and batches really are on CUDA and that the results agree with the CPU; reports trials per
# minute GPU vs CPU on ResNet-20. See scripts/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device here')"
PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py "$@"

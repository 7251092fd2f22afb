#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): every GPU path in a few minutes on one CUDA GPU, printed as one table.
#   bash bench/gpu_check.sh            # on a GPU machine; <= 10 minutes on one H100/H200
#   bash bench/gpu_check.sh --cpu      # the paths that need no CUDA, in seconds (the test suite runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec "${PYTHON:-python}" bench/gpu_check.py "$@"

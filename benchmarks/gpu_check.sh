#!/usr/bin/env bash
# One GPU, at most 8 minutes: the step-overhead ratio (host + reconstruction vs host) of vicreg-vit-s16, ibot-vit-s16
# and dinov2-vit-l16 in bf16, images/s, peak memory, the decoders' layout, torch.compile, the Trainer's overhead and
# the pair pipeline's pairs/s against the step's need (benchmarks/gpu_check.py says how each is measured).
#
#   bash benchmarks/gpu_check.sh            # on a GPU machine
#   bash benchmarks/gpu_check.sh --smoke    # on the CPU with shrunk presets (the test suite runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout 480 python -u benchmarks/gpu_check.py "$@"

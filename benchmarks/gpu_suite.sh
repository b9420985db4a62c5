#!/usr/bin/env bash
# The whole GPU check on one CUDA GPU, about 10 minutes:
#   1. the tests marked cuda (CPU-vs-GPU agreement, AMP steps, training on the GPU);
#   2. bench_scale on the GPU (gradient, HVP, Lanczos, SAM/SGD steps, surface points/s, GPU peak memory);
#   3. a CIFAR-shaped ResNet-56 end to end with the CLI: train (fp16 AMP), hessian --top-k 5 --trace
#      --density, surface, sharpness, each timed.
# Run from the repository root after 'pip install -e ".[dev]"' with a CUDA build of torch:
#   bash benchmarks/gpu_suite.sh [OUT]
# Everything it writes goes to OUT (default runs/gpu_suite); the log is OUT/suite.log.
set -euo pipefail
OUT=${1:-runs/gpu_suite}
mkdir -p "$OUT"
exec > >(tee "$OUT/suite.log") 2>&1
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

step() { local name=$1; shift; local t0=$SECONDS; echo "== $name"; "$@"; echo "== $name: $((SECONDS - t0)) s"; }

step "cuda tests" python -m pytest -q -m cuda tests/
step "bench_scale" python benchmarks/bench_scale.py --device cuda --threads 4 --sizes 1000,4000,16000 \
    --grow cnn,resnet20,resnet56,wrn16-4 --lanczos cnn,resnet20,resnet56,wrn16-4 --out "$OUT/scale.json"

# CIFAR-shaped synthetic data (timing does not depend on the pixels): 10,000 train, 2,000 test
python - "$OUT/cifar_shaped.npz" <<'PY'
import sys
import numpy as np
rng = np.random.default_rng(0)
np.savez(sys.argv[1], X=rng.random((10000, 3, 32, 32), dtype=np.float32), y=rng.integers(0, 10, 10000),
         X_test=rng.random((2000, 3, 32, 32), dtype=np.float32), y_test=rng.integers(0, 10, 2000))
PY
CK="$OUT/resnet56/checkpoint.pt"
rm -rf "$OUT/resnet56"
step "train resnet56 (SAM, fp16, 2 epochs)" sharpscope train --model resnet56 --data npz --data-root "$OUT/cifar_shaped.npz" \
    --optimizer sam --epochs 2 --batch-size 128 --amp fp16 --device cuda --no-progress --out "$OUT/resnet56"
step "hessian top-5, trace, density" sharpscope hessian "$CK" --top-k 5 --trace --density --samples 2048 \
    --device cuda --no-progress --overwrite --json "$OUT/hessian.json"
step "surface 2-D 11x11" sharpscope surface "$CK" --dim 2 --grid -1:1:11 --samples 2048 --device cuda \
    --no-progress --overwrite --out "$OUT/surface" --json "$OUT/surface.json"
step "sharpness m=16,128" sharpscope sharpness "$CK" --m 16,128 --samples 2048 --device cuda --no-progress --overwrite \
    --json "$OUT/sharpness.json"
echo "gpu_suite: done; log in $OUT/suite.log"

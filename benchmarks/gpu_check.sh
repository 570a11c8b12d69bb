#!/usr/bin/env bash
# The device check, for a machine with a CUDA GPU (run from the repository root; about 5 minutes):
# the device tests of fused execution on CUDA, then the throughput benchmark on the GPU.
set -euo pipefail
out="${OUT:-bench_out/gpu}"
mkdir -p "$out"
python -m pip install -q -e ".[atari,minatar,bench,dev]" >/dev/null
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
python -m pytest -q tests/test_fused.py 2>&1 | tail -3 | tee "$out/tests.txt"
timeout 420 python benchmarks/throughput.py --device cuda --threads 4 --steps 4096 --skip-extractor --out "$out" \
    2>&1 | tail -40 | tee "$out/throughput.txt"

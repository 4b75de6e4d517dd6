#!/usr/bin/env bash
# GPU checks in one device call (see docs/BENCHMARKS.md): run from the repository root on a
# machine with CUDA, e.g. through the workplace's device tool. Optional: wheels in .whl/
# (packages the machine lacks) and a copy of ../shared in ./shared (real data).
# Writes logs to ${OUT:-/tmp/device_out}.
set -u
OUT=${OUT:-/tmp/device_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
[ -d shared ] && [ ! -e ../shared ] && ln -s "$PWD/shared" ../shared
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
for step in "$@"; do
  case "$step" in
    tests) python3 -m pytest -q -p no:cacheprovider tests/render tests/flame 2>&1 | tee "$OUT/tests.log" | tail -15 ;;
    rtests) python3 -m pytest -q -p no:cacheprovider tests/render 2>&1 | tee "$OUT/rtests.log" | tail -8 ;;
    bench256) python3 -m bench.render --device cuda --res 256 2>&1 | tee "$OUT/bench_render_cuda_256.jsonl" ;;
    bench) python3 -m bench.render --device cuda 2>&1 | tee "$OUT/bench_render_cuda.jsonl" ;;
    graph) python3 -m bench.render --device cuda --mode graph packed 2>&1 | tee "$OUT/bench_render_graph.jsonl" ;;
    profile) python3 -m bench.profile_render --device cuda 2>&1 | tee "$OUT/profile_cuda.txt" | tail -45 ;;
    # the experimental CUDA kernels (fitting/render/native/cuda/__init__.py): build, check, measure
    ntests) FLAME_FIT_NATIVE_CUDA=1 python3 -m fitting.render.native 2>&1 | tail -4
            FLAME_FIT_NATIVE_CUDA=1 python3 -m pytest -q -p no:cacheprovider tests/render 2>&1 | tee "$OUT/ntests.log" | tail -25 ;;
    nbench) FLAME_FIT_NATIVE_CUDA=1 python3 -m bench.render --device cuda 2>&1 | tee "$OUT/bench_render_native_cuda.jsonl" ;;
    nprofile) FLAME_FIT_NATIVE_CUDA=1 python3 -m bench.profile_render --device cuda 2>&1 | tee "$OUT/profile_native_cuda.txt" | tail -45 ;;
    demo) python3 run_fitting.py --config configs/demo.txt --device cuda --savefolder /tmp/demo_out 2>&1 | tail -5
          cp /tmp/demo_out/*/report.json "$OUT/demo_report_cuda.json" 2>/dev/null
          python3 -c "import json,sys; r=json.load(open('$OUT/demo_report_cuda.json')); print(json.dumps({'timing_s': r['timing_s'], 'ground_truth': r.get('ground_truth')}))" ;;
    *) echo "unknown step $step" ;;
  esac
done

#!/usr/bin/env bash
# The GPU check (issue 13): one prepared command for a lent CUDA machine, under 8 minutes.
#   here:   .venv/bin/python benchmarks/gpu_prepare.py    (writes .gpu/, git-ignored, under 64 MiB)
#   there:  bash benchmarks/gpu_check.sh                  (device run with carry [".gpu"])
# It installs the carried wheels, runs the CUDA tests, the pipeline benchmark on the GPU and a timed
# training run, and writes all of it to one file: $OUT/gpu_check.txt (else .gpu/gpu_check.txt).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.gpu}"
log="$out/gpu_check.txt"
mkdir -p "$out"
: > "$log"
export PYTHONUNBUFFERED=1

step() {   # step TITLE SECONDS COMMAND...: run it with a time limit, its output and exit code into the log
    local title=$1 limit=$2
    shift 2
    echo "## $title" | tee -a "$log"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    echo "-> exit ${PIPESTATUS[0]}, $((SECONDS - t0)) s" | tee -a "$log"
}

step "install carried wheels" 60 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/microface-site .gpu/wheels/*.whl
export PYTHONPATH="/tmp/microface-site:$PWD"
export MICROFACE_FLAME="$PWD/.gpu/assets/microface_ict_flame.pkl" MICROFACE_ASSETS="$PWD/.gpu/assets"
step "machine" 30 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
    python3 -c "import torch, cv2, numpy; print(torch.__version__, torch.cuda.get_device_name(0), cv2.__version__, numpy.__version__)"'
step "CUDA tests and the torch stages' tests" 150 python3 -m pytest -q -p no:cacheprovider \
    tests/test_cuda.py tests/test_flow_reader.py tests/test_learned.py
step "pipeline on the GPU (single_face.mp4)" 150 python3 benchmarks/bench_pipeline.py .gpu/videos/single_face.mp4 --device cuda
step "timed training, 300 steps on the GPU" 200 python3 -m backend.training.train --data .gpu/train --steps 300 --device cuda \
    --out /tmp/microface-gpu.pt --checkpoint /tmp/microface-gpu.ckpt
echo "figures: $log"

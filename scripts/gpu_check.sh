#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU and no network: for CUDA and wgpu, where each
# works, the fused op's loss and gradients against the CPU's, then the LM-head step (N 2048,
# D 512, C 32768, f32) of the fused op, our autodiff path and Burn's CrossEntropyLoss: time,
# and peak device memory sampled by nvidia-smi every 50 ms (each step a fresh process).
#
# Nothing is built there: build the binary here and carry it (target/ is ignored by git):
#
#   cargo build --release --features linear-softmax/wgpu --example gpu_check
#   # CUDA: add linear-softmax/cuda where the build can link it (see BENCHMARKS.md, "GPU")
#   bash scripts/gpu_check.sh target/release/examples/gpu_check
#
# Starts nothing after 7 minutes and bounds each process by what is left of 8, so that it ends
# within 8 minutes. Exits 1 when a check or a step failed (a backend the binary lacks is not a
# failure).
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/examples/gpu_check}
shape=${SHAPE:-2048,512,32768}
start_by=420
end_by=480
failed=0
samples=$(mktemp)
trap 'rm -f "$samples"' EXIT

used_mib() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -n 1; }
# Runs "$@" under a timeout of what is left of the 8 minutes; false when none is left.
bounded() {
    local left=$((end_by - SECONDS))
    ((left > 0)) && timeout "$left" "$@"
}

smi=true
if ! nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; then
    echo "no nvidia-smi: device memory is not measured"
    smi=false
fi
for backend in cuda wgpu; do
    if ((SECONDS > start_by)); then
        echo "== $backend: skipped (past ${start_by} s)"
        continue
    fi
    echo "== $backend: the fused op and the autodiff path against the CPU (f64)"
    bounded "$bin" --backend "$backend" --check
    status=$?
    echo "   (exit status $status: 0 passed, 1 a difference above the tolerance, 2 no such backend)"
    if ((status == 2)); then
        continue
    elif ((status != 0)); then
        failed=1
    fi
    for step in fused autodiff burn_ce; do
        if ((SECONDS > start_by)); then
            echo "== $backend $step: skipped (past ${start_by} s)"
            continue
        fi
        if $smi; then
            base=$(used_mib)
            nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 >"$samples" &
            sampler=$!
        fi
        line=$(bounded "$bin" --backend "$backend" --step "$step" --shape "$shape")
        status=$?
        echo "== $backend $step (exit status $status): $line"
        if ((status != 0)); then
            failed=1
        fi
        if $smi; then
            kill "$sampler" 2>/dev/null
            wait "$sampler" 2>/dev/null
            # Only numbers: nvidia-smi writes "[N/A]" where it cannot read the memory.
            peak=$(grep -E '^[0-9]+$' "$samples" | sort -n | tail -n 1)
            if [[ $peak =~ ^[0-9]+$ && $base =~ ^[0-9]+$ ]]; then
                echo "   the process's peak device memory (its context, inputs and parameters" \
                    "included): $((peak - base)) MiB (nvidia-smi)"
            else
                echo "   device memory: nvidia-smi gave no reading"
            fi
        fi
    done
done
exit "$failed"

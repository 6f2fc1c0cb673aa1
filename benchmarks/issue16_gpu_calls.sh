#!/usr/bin/env bash
# Issue 16's open lines as GPU-machine calls (the run tool; carry [".gpukit"], built by scripts/gpu_kit.sh).
# Each call writes its JSON and logs under $OUT; RESULTS.md's serving section says what each figure means.
#
#   bash benchmarks/issue16_gpu_calls.sh bound      # ~6 min: the measured prefill bound, 0.5B served vs offline
#   bash benchmarks/issue16_gpu_calls.sh lmdeploy   # ~6 min: swiftops[lmdeploy] vs LMDeploy direct, both shapes
set -uo pipefail
export PYTHONPATH=$PWD/.gpukit/boot PYTHONUNBUFFERED=1
OUT=${OUT:?the run tool sets OUT}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
step() {  # step NAME SECONDS COMMAND...: one part, its log under $OUT, its exit status in $OUT/rc.txt
    local name=$1 limit=$2
    shift 2
    timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "$name rc=$?" | tee -a "$OUT/rc.txt"
}
case "${1:-}" in
  bound)
    # the step clock and the graphs it times, then where a prefilling step's time goes, then the served figures
    step gpu-tests 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/engines/pt/test_pt_engine_gpu.py \
        tests/engines/pt/test_mixed_graphs.py tests/engines/pt/test_host_staging_gpu.py
    step mixed-profile 100 python3 -m benchmarks.mixed_step_profile --shape 0.5b --out "$OUT/mixed-05b.json"
    step trace 110 python3 -m benchmarks.serving --shape 0.5b --parts pt_offline --concurrency 128 \
        --offline_settings '{"max_itl_ratio": 1.75}' --trace_phases --deadline_s 80 --out "$OUT/trace-05b.json"
    step served 170 python3 -m benchmarks.serving --shape 0.5b --parts pt_served,pt_offline --deadline_s 150 \
        --out "$OUT/serving-05b.json"
    ;;
  lmdeploy)
    # both shapes in one call (issue 16: "on both shapes, in one run")
    step lmdeploy-05b 170 python3 -m benchmarks.serving --shape 0.5b --parts lmdeploy_offline,lmdeploy_direct \
        --concurrency 128 --deadline_s 150 --out "$OUT/lmdeploy-05b.json"
    step lmdeploy-7b 220 python3 -m benchmarks.serving --shape 7b --parts lmdeploy_offline,lmdeploy_direct \
        --concurrency 128 --deadline_s 160 --out "$OUT/lmdeploy-7b.json"
    ;;
  *)
    echo "usage: $0 bound|lmdeploy" >&2
    exit 2
    ;;
esac
tail -n 3 "$OUT"/*.log

#!/usr/bin/env bash
# The GPU check to run on a lent GPU machine (no network, a few tens of MB carried): gpu-check on
# tiny, base and large-v2, in fp32 and bf16, against the CPU backend of that machine (fp32), with the GPU's memory
# polled from nvidia-smi every half second for the peak. Prepare here, run there:
#
#   scripts/cuda.sh build && strip -o gpu-check target-cuda/release/gpu-check && xz -6 -f gpu-check
#   # gpu-check and gpu-check.xz are git-ignored: carry gpu-check.xz (about 29 MB) explicitly
#   # (the device tool's `carry`), then on the GPU machine:
#   xz -dkf gpu-check.xz && scripts/gpu_device_check.sh ./gpu-check "$OUT"
#
# Writes OUT/CONFIG-PRECISION.{txt,json,peak_mib} and OUT/nvidia-smi.txt. large-v2 runs one clip per
# batch through two experts (its activations are about 16 GiB per row in fp32; gpu-check --memory).
set -uo pipefail
bin="${1:?usage: $0 GPU_CHECK_BINARY OUT_DIR}"
out="${2:?usage: $0 GPU_CHECK_BINARY OUT_DIR}"
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed: no GPU memory figures" >&2
status=0
run() {
  local name="$1"; shift
  local mem="$out/$name.memory_used_mib"
  : > "$mem"
  ( while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >> "$mem" 2>/dev/null; sleep 0.5; done ) &
  local poller=$!
  local t0=$SECONDS
  "$bin" --device cuda "$@" --json "$out/$name.json" > "$out/$name.txt" 2>&1
  local rc=$?
  kill "$poller" 2>/dev/null; wait "$poller" 2>/dev/null
  echo "rc=$rc seconds=$((SECONDS - t0))" >> "$out/$name.txt"
  sort -n "$mem" | tail -1 > "$out/$name.peak_mib"
  echo "$name: rc=$rc, $((SECONDS - t0)) s, peak GPU memory $(cat "$out/$name.peak_mib") MiB"
  [ "$rc" -eq 0 ] || status=1
}
for p in fp32 bf16; do
  run "tiny-$p" --config tiny --repeat 5 --batch 4 --precision "$p"
  run "base-$p" --config base --repeat 5 --batch 4 --precision "$p"
  run "large-v2-$p" --config large-v2 --repeat 2 --batch 1 --experts 2 --precision "$p"
done
exit $status

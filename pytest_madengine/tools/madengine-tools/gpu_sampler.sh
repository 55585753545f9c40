#!/bin/sh
# GPU power or VRAM samples while the model runs: the gpu_info_power_profiler and
# gpu_info_vram_profiler tools of pytest-madengine's tools.json.
#   gpu_sampler.sh start power|vram    (a pre script: starts sampling in the background)
#   gpu_sampler.sh stop power|vram     (a post script: stops it)
# Each sample is the vendor tool's CSV output, every line prefixed with the epoch time,
# appended to ../gpu_info_<what>_profiler_output.csv: the workspace, so it reaches the host.
action=$1
what=$2
interval=${MAD_SAMPLER_INTERVAL:-0.1}
output="../gpu_info_${what}_profiler_output.csv"
pidfile="/tmp/mad-gpu-sampler-$what.pid"

have() { command -v "$1" >/dev/null 2>&1; }

sample() {
  case $what in
    power)
      if have amd-smi; then amd-smi metric --power --csv
      elif have rocm-smi; then rocm-smi --showpower --csv
      elif have nvidia-smi; then nvidia-smi --query-gpu=index,power.draw --format=csv,noheader
      else return 1
      fi ;;
    vram)
      if have amd-smi; then amd-smi metric --mem-usage --csv
      elif have rocm-smi; then rocm-smi --showmeminfo vram --csv
      elif have nvidia-smi; then nvidia-smi --query-gpu=index,memory.used,memory.total --format=csv,noheader
      else return 1
      fi ;;
    *)
      echo "gpu_sampler: what to sample: power or vram, not '$what'" >&2
      exit 2 ;;
  esac
}

case $action in
  start)
    if ! sample >/dev/null 2>&1; then
      echo "gpu_sampler: no amd-smi, rocm-smi or nvidia-smi answers here; no $what samples" >&2
      exit 0
    fi
    (
      while :; do
        now=$(date +%s)
        sample 2>/dev/null | sed "s/^/$now,/"
        sleep "$interval"
      done
    ) >>"$output" &
    echo $! >"$pidfile"
    ;;
  stop)
    if [ -f "$pidfile" ]; then
      kill "$(cat "$pidfile")" 2>/dev/null
      rm -f "$pidfile"
    fi
    ;;
  *)
    echo "usage: gpu_sampler.sh start|stop power|vram" >&2
    exit 2 ;;
esac

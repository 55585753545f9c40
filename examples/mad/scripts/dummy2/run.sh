#!/bin/bash
# A dummy benchmark: reports a throughput that grows with the batch size.
set -euo pipefail
batch_size=64
while [ $# -gt 0 ]; do
  case "$1" in
    --batch_size) batch_size="$2"; shift 2 ;;
    *) shift ;;
  esac
done
echo "model ${MAD_MODEL_NAME:-?} on ${MAD_RUNTIME_NGPUS:-0} GPU(s), batch size ${batch_size}"
echo "performance: $((batch_size * 10)).5 samples_per_second"

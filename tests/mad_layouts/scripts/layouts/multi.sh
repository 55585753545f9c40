#!/bin/sh
# multiple_results with a column of its own (temperature), which perf.csv gets too.
cat > perf_layouts_multi.csv <<'CSV'
model,performance,metric,temperature
small,10.5,samples_per_second,61
large,20,samples_per_second,64
CSV

#!/bin/sh
# multiple_results: a text value (a CPU list), a number, and an extra column; headers
# with spaces, as real scripts write them.
cat > "$MAD_OUTPUT_CSV" <<'CSV'
model, performance, metric, temperature
cpus,0-1,cpu_list,40
tput,812.5,samples_per_second,41
CSV

#!/bin/sh
# The run directory is fresh, the scripts sit in it, and what the run leaves in it or
# copies to its parent reaches the host.
echo "pwd=$(pwd)"
[ "$(basename "$(pwd)")" = run_directory ] || exit 5
[ -e stale.txt ] && { echo "run directory is not fresh"; exit 6; }
[ -f workspace.sh ] || exit 7
echo "stale" > stale.txt
echo "left in the run directory" > left_here.txt
echo "run $2" > "../copied_to_parent_$2.txt"
echo "sample,1" > probe_output.csv
echo "performance: 3 workspace_ok"

#!/bin/sh
# What the tree's own tools (scripts/common/tools.json) did to this run.
echo "tool=${LAYOUT_TOOL:-unset} wrapped=${LAYOUT_WRAPPED:-no} profiler=${LAYOUT_PROFILER:-none}"
echo "performance: 5 runs"

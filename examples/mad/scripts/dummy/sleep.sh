#!/bin/bash
# Sleeps longer than its timeout, to show how a hung benchmark is reported.
seconds=60
[ "${1:-}" = "--seconds" ] && seconds="$2"
echo "sleeping ${seconds} s"
sleep "$seconds"
echo "performance: 1 samples_per_second"

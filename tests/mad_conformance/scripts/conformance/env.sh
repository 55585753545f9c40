#!/bin/sh
# Run options that shape the container: docker_cpus pins CPUs, docker_gpus picks GPUs.
cpus=$(awk '/^Cpus_allowed_list/ {print $2}' /proc/self/status)
echo "performance: 1 cpus=${cpus}_gpus=${MAD_HOST_GPU_IDS:-none}"

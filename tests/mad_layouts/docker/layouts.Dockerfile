# CONTEXT {'gpu_vendor': 'AMD'}
ARG BASE_DOCKER=mad-base/busybox:latest
FROM $BASE_DOCKER

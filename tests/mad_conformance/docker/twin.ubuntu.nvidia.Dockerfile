# CONTEXT {'gpu_vendor': 'NVIDIA', 'guest_os': 'UBUNTU'}
ARG BASE_DOCKER=mad-base/busybox:latest
FROM $BASE_DOCKER
ENV TWIN_FLAVOUR=nvidia

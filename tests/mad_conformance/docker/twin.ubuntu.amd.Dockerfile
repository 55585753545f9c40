# CONTEXT {'gpu_vendor': 'AMD', 'guest_os': 'UBUNTU'}
ARG BASE_DOCKER=mad-base/busybox:latest
FROM $BASE_DOCKER
ENV TWIN_FLAVOUR=ubuntu

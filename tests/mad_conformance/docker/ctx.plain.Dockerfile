# CONTEXT {'gpu_vendor': 'AMD', 'ctx_test': 'None'}
ARG BASE_DOCKER=mad-base/busybox:latest
FROM $BASE_DOCKER
ENV CTX_FLAVOUR=plain

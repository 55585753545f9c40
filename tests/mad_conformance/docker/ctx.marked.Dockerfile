# CONTEXT {'gpu_vendor': 'AMD', 'ctx_test': 'conformance'}
ARG BASE_DOCKER=mad-base/busybox:latest
FROM $BASE_DOCKER
ENV CTX_FLAVOUR=marked

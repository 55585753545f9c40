# CONTEXT {'gpu_vendor': 'AMD'}
# A base the context's docker_build_arg BASE_DOCKER replaces.
ARG BASE_DOCKER=mad-base/debian:bookworm
FROM $BASE_DOCKER

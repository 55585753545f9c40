# CONTEXT {'gpu_vendor': 'AMD'}
# url models clone inside the container: an image with git.
ARG BASE_DOCKER=mad-base/debian:bookworm
FROM $BASE_DOCKER

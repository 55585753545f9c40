# CONTEXT {'gpu_vendor': 'NVIDIA', 'guest_os': 'UBUNTU'}
# The base is made locally by scripts/bootstrap; --mad-context docker_build_arg can swap it.
ARG BASE_DOCKER=mad-base/debian:bookworm
FROM $BASE_DOCKER
ENV MAD_EXAMPLE_FLAVOUR=nvidia
WORKDIR /myworkspace

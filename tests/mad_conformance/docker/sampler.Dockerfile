# CONTEXT {'gpu_vendor': 'AMD'}
ARG BASE_DOCKER=mad-base/busybox:latest
FROM $BASE_DOCKER
# A stand-in amd-smi for the GPU power sampler of the default tools file.
RUN printf '#!/bin/sh\necho "gpu,socket_power"\necho "0,321"\n' > /bin/amd-smi && chmod 755 /bin/amd-smi

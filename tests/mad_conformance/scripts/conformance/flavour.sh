#!/bin/sh
# Which Dockerfile built this image.
echo "performance: 1 ${TWIN_FLAVOUR:-${CTX_FLAVOUR:-none}}"

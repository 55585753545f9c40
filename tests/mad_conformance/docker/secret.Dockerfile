# CONTEXT {'gpu_vendor': 'AMD'}
ARG BASE_DOCKER=mad-base/busybox:latest
FROM $BASE_DOCKER
# The model's cred entry arrives as build args; an echo of one must come out masked.
ARG CONF_CRED_USERNAME
ARG CONF_CRED_PASSWORD
RUN echo "build sees CONF_CRED_USERNAME=$CONF_CRED_USERNAME CONF_CRED_PASSWORD=$CONF_CRED_PASSWORD"

#!/bin/sh
# GIT_SSH_COMMAND of a `url` model's clone with an ssh_key_file in its `cred` entry:
# the login comes from the environment, so nothing of it is ever part of a command text.
if [ -n "${MAD_GIT_USERNAME:-}" ]; then
  set -- -l "$MAD_GIT_USERNAME" "$@"
fi
exec ssh -i "$MAD_GIT_SSH_KEY" -o IdentitiesOnly=yes -o StrictHostKeyChecking=no \
  -o UserKnownHostsFile=/dev/null "$@"

#!/bin/sh
# cred: CONF_CRED gives CONF_CRED_<KEY> variables; the log shows the password masked.
echo "user=$CONF_CRED_USERNAME"
echo "secret=$CONF_CRED_PASSWORD"
[ -n "$CONF_CRED_PASSWORD" ] || exit 4
echo "performance: 1 cred_ok"

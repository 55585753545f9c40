#!/bin/sh
# An entry with upper-case keys: MAD_MINIO_<KEY> as the keys say.
echo "endpoint=$MAD_MINIO_MINIO_ENDPOINT user=$MAD_MINIO_USERNAME password=$MAD_MINIO_PASSWORD"
[ "$MAD_MINIO_AWS_ENDPOINT_URL_S3" = "http://127.0.0.1:9999" ] || exit 4
echo "performance: 2 cred_ok"

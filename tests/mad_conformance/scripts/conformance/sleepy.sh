#!/bin/sh
sleep 1
echo "performance: 6 sampled_ok"

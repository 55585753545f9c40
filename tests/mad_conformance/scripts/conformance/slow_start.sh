#!/bin/sh
echo "model starts"
echo "performance: 4 timeout_line_ok"

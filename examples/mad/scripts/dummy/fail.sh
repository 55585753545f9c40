#!/bin/bash
# Crashes, as a broken benchmark would.
echo "loading model..."
echo "RuntimeError: out of memory" >&2
exit 1

#!/bin/bash
# Finishes without printing a performance line.
echo "training finished, but nothing was measured"

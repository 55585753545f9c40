#!/bin/sh
# Fails, naming what is missing, unless the model directory holds every layout.
check() { if eval "$1"; then :; else echo "layout missing: $1"; exit 1; fi; }
check 'test -f docker/layouts.Dockerfile'              # a linked folder of the tree
check 'test "$(cat "data files/with space.txt")" = "spaced out"'
check 'test "$(cat deep/er/est/leaf.txt)" = leaf'
check 'test "$(cat leaf_link.txt)" = leaf'             # a linked file of the tree
check 'test -d __pycache__'                            # left by discovery
check 'test -L outside && ! test -e outside'           # a link out of the tree stays one
echo "performance: 3 layouts"

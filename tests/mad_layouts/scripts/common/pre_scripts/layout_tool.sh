#!/bin/sh
echo "layout_tool pre: $1"

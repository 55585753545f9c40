#!/bin/sh
echo "model $* TOOL_A=${TOOL_A:-off}" >> "../order_${MAD_MODEL_NAME}.txt"
echo "performance: 5 scripted_ok"

#!/bin/sh
# A pre or post script: says who ran it, with which args, in the model's order file.
echo "note $*"
echo "$*" >> "../order_${MAD_MODEL_NAME}.txt"

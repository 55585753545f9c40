#!/bin/sh
# Copied into the cloned repository, and run there: the repository's files are here.
echo "repo says $(cat VALUE)"
echo "performance: $(cat VALUE) from_repo"

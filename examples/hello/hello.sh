#!/bin/sh
# Runs inside the sandbox: prints where it is and the greeting it was copied with.
echo "running as $(id -u):$(id -g) on $(hostname) in $(pwd)"
cat greeting.txt

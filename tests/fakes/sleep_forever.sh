#!/bin/sh
# Writes its pid to $1 (atomically), then sleeps with default signal handling.
echo $$ > "$1.tmp" && mv "$1.tmp" "$1"
exec sleep 600

#!/bin/sh
# Ignores SIGTERM (the exec'd sleep inherits that), writes its pid to $1, then sleeps.
trap '' TERM
echo $$ > "$1.tmp" && mv "$1.tmp" "$1"
exec sleep 600

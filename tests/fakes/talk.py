#!/usr/bin/env python3
"""Writes known lines to stdout and stderr, then exits with the code given as argv[1]."""

import sys

sys.stdout.write("alpha\nbeta\n")
sys.stdout.flush()
sys.stderr.write("warn 1\nwarn 2\n")
sys.stderr.flush()
sys.stdout.write("gamma")
sys.exit(int(sys.argv[1]))

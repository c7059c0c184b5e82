#!/usr/bin/env bash
# scripts/demo.sh: install what is missing, build with warnings as errors,
# start a throwaway cluster that preloads idempotency, walk through what the
# extension does (examples/walkthrough.sql), and stop the cluster.
# Safe to run again.
#
# Usage: bash scripts/demo.sh     (as root, or as a user with sudo)

source "$(dirname "$0")/lib.sh"
idem_workdir demo

idem_packages
idem_owner
idem_build
idem_start_cluster

say "walkthrough (examples/walkthrough.sql)"
# Read from standard input, so that errors the walkthrough shows on purpose
# read as psql prints them to a user, without the file name and line.
(cd "$IDEM_WORK/src/examples" &&
	as_owner psql -X -q -v ON_ERROR_STOP=1 --echo-queries <walkthrough.sql)
say "stopping the cluster"

# Makefile for the idempotency extension (PGXS).
#
#   make                      build, warnings are errors
#   make install              install into the PostgreSQL that pg_config names
#   make installcheck         regression, isolation and TAP suites against a
#                             running server that preloads idempotency
#
# scripts/test.sh does all of it on a throwaway cluster.

EXTENSION = idempotency idempotency_router
MODULE_big = idempotency
OBJS = \
	src/idempotency.o \
	src/claim.o \
	src/call_scan.o \
	src/claims_table.o \
	src/claim_wait.o \
	src/fingerprint.o \
	src/guard.o \
	src/guard_update.o \
	src/guard_move.o \
	src/util.o \
	src/transition.o \
	src/lock.o \
	src/memo.o \
	src/lease.o \
	src/token.o \
	src/stats.o \
	src/purge.o \
	src/policy.o \
	src/snowflake.o \
	src/snowflake_state.o \
	src/serve.o \
	src/snowflake_type.o \
	src/sync_wait.o

# The one version string: the control file's default_version, which
# META.json and CHANGELOG.md repeat (a test checks) and the module reports.
EXTVERSION := $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" idempotency.control)
PG_CPPFLAGS += -DIDEM_VERSION='"$(EXTVERSION)"'

DATA = $(wildcard sql/idempotency--*.sql) $(wildcard sql/idempotency_router--*.sql)
DOCS = README.md

REGRESS = snowflake_type snowflake claims responses claim_wait serve guard guard_update guard_calls guard_schema guard_partitions guard_privacy guard_limits pessimistic transition_cache stats policies scopes lock_ids fingerprint_paths repair_hints mistakes call_scan
REGRESS_OPTS = --load-extension=idempotency
ISOLATION = snowflake_order claim_race claim_takeover guard_race guard_tenants guard_ddl transition_race keyed_lock lease_race token_race purge_race scope_access
ISOLATION_OPTS = --load-extension=idempotency
TAP_TESTS = 1

# Warnings are errors; a packager may override WERROR= on the command line.
WERROR ?= -Werror
PG_CFLAGS += -Wall -Wextra $(WERROR) -Wno-unused-parameter

EXTRA_CLEAN = results output_iso tmp_check log regression.diffs regression.out

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXN: "make dist" writes idempotency-$(EXTVERSION).zip, a git archive of
# the committed HEAD under the one directory idempotency-$(EXTVERSION)/,
# and keeps it only if scripts/check-meta.py finds its META.json valid for
# PGXN (meta spec 1.0.0, versions agreeing with the control file).  PGXS
# defines no dist target of its own.
DISTNAME = idempotency-$(EXTVERSION)
.PHONY: dist
dist:
	@git diff --quiet HEAD -- || echo "make dist: uncommitted changes are not in $(DISTNAME).zip (git archive HEAD)" >&2
	git archive --format=zip --prefix=$(DISTNAME)/ -o $(DISTNAME).zip HEAD
	python3 scripts/check-meta.py $(DISTNAME).zip || { rm -f $(DISTNAME).zip; exit 1; }

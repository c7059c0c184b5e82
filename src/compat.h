/*-------------------------------------------------------------------------
 *
 * compat.h
 *	  Shims for the PostgreSQL versions idempotency supports (15 to 18).
 *
 * Every version difference lives here, so that the rest of the code reads
 * as if written for a single release.  Nothing in this file may change the
 * behaviour on PostgreSQL 15, the primary target.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEMPOTENCY_COMPAT_H
#define IDEMPOTENCY_COMPAT_H

#if PG_VERSION_NUM < 150000
#error "idempotency requires PostgreSQL 15 or later"
#endif

/*
 * Soft input errors (errsave) arrived in PostgreSQL 16.  Before that an
 * input function can only throw, so errsave degrades to ereport(ERROR) and
 * the escontext argument is ignored.
 */
#if PG_VERSION_NUM < 160000
#define errsave(context, ...)	ereport(ERROR, __VA_ARGS__)
#else
#include "nodes/miscnodes.h"
#endif

/* varatt.h was split out of postgres.h in PostgreSQL 16. */
#if PG_VERSION_NUM >= 160000
#include "varatt.h"
#endif

/*
 * The "extra" of a GUC check hook must come from guc_malloc since
 * PostgreSQL 16 (GUC memory became a memory context); before that guc.c
 * released it with free() and did not export guc_malloc.
 */
#if PG_VERSION_NUM < 160000
#define guc_malloc(elevel, size)	malloc(size)
#endif

/*
 * PostgreSQL 16 replaced the per-catalog ACL checks of functions and
 * schemas with object_aclcheck.  (Callers include utils/acl.h.)
 */
#if PG_VERSION_NUM >= 160000
#define idem_proc_aclcheck(fn, role, mode) \
	object_aclcheck(ProcedureRelationId, (fn), (role), (mode))
#define idem_namespace_aclcheck(nsp, role, mode) \
	object_aclcheck(NamespaceRelationId, (nsp), (role), (mode))
#else
#define idem_proc_aclcheck(fn, role, mode)	pg_proc_aclcheck((fn), (role), (mode))
#define idem_namespace_aclcheck(nsp, role, mode) \
	pg_namespace_aclcheck((nsp), (role), (mode))
#endif

/* index_beginscan took an instrumentation argument in PostgreSQL 18. */
#if PG_VERSION_NUM >= 180000
#define idem_index_beginscan(heap, index, snapshot, nkeys) \
	index_beginscan((heap), (index), (snapshot), NULL, (nkeys), 0)
#else
#define idem_index_beginscan(heap, index, snapshot, nkeys) \
	index_beginscan((heap), (index), (snapshot), (nkeys), 0)
#endif

/*
 * RelationGetPrimaryKeyIndex took deferrable_ok in PostgreSQL 18, when a
 * deferrable primary key became visible to it; before, it never returned
 * one, which false keeps.
 */
#if PG_VERSION_NUM >= 180000
#define idem_primary_key_index(rel)	RelationGetPrimaryKeyIndex((rel), false)
#else
#define idem_primary_key_index(rel)	RelationGetPrimaryKeyIndex(rel)
#endif

/*
 * ProcNumber, counted from 0 over every PGPROC, replaced BackendId,
 * counted from 1 over regular backends, in PostgreSQL 17.  IdemBackendId()
 * is the old numbering on every version: 1 to MaxBackends for a backend or
 * background worker, something else for an auxiliary process or before
 * InitProcess().
 */
#if PG_VERSION_NUM >= 170000
#include "storage/procnumber.h"
#define IdemBackendId()	(MyProcNumber == INVALID_PROC_NUMBER ? 0 : MyProcNumber + 1)
#else
#include "storage/backendid.h"
#define IdemBackendId()	(MyBackendId == InvalidBackendId ? 0 : MyBackendId)
#endif

/*
 * pg_noreturn, a specifier written before the declaration, replaced the
 * attribute pg_attribute_noreturn() in PostgreSQL 18.
 */
#if PG_VERSION_NUM < 180000 && !defined(pg_noreturn)
#define pg_noreturn pg_attribute_noreturn()
#endif

/*
 * PostgreSQL 18 lets a module name itself and its version in its magic
 * block (pg_get_loaded_modules shows them).  IDEM_VERSION comes from the
 * control file through the Makefile.
 */
#ifdef PG_MODULE_MAGIC_EXT
#define IDEM_MODULE_MAGIC	PG_MODULE_MAGIC_EXT(.name = "idempotency", .version = IDEM_VERSION)
#else
#define IDEM_MODULE_MAGIC	PG_MODULE_MAGIC
#endif

/*
 * Extensions could name their own wait events from PostgreSQL 17 on
 * (WaitEventExtensionNew); before, every wait shows as "Extension".
 */
#if PG_VERSION_NUM >= 170000
#define IDEM_HAVE_CUSTOM_WAIT_EVENTS 1
#endif

/*
 * ExecInsertIndexTuples took an onlySummarizing argument in PostgreSQL 16.
 * idem_insert_index_tuples inserts a new tuple's entries into every index.
 */
#if PG_VERSION_NUM >= 160000
#define idem_insert_index_tuples(rri, slot, estate, nodup, conflict, arbiters) \
	ExecInsertIndexTuples((rri), (slot), (estate), false, (nodup), (conflict), (arbiters), false)
#else
#define idem_insert_index_tuples(rri, slot, estate, nodup, conflict, arbiters) \
	ExecInsertIndexTuples((rri), (slot), (estate), false, (nodup), (conflict), (arbiters))
#endif

#endif							/* IDEMPOTENCY_COMPAT_H */

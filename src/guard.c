/*-------------------------------------------------------------------------
 *
 * guard.c
 *	  The state-transition guard: a C trigger that makes a table's state
 *	  column follow a state machine and checks and bumps its version column,
 *	  for every writer (application, psql, bulk UPDATE, COPY).
 *
 * A guard is the trigger idem_guard on the table, BEFORE INSERT OR UPDATE
 * FOR EACH ROW, with four arguments: machine, state column, version column
 * ('' for none) and 'strict' or 'lenient'.  Machines are rows of
 * idempotency.machines and idempotency.transitions.
 *
 * Caching.  Each backend keeps what a row check needs: per machine, its
 * states, which are initial, which terminal, and the allowed edges as a
 * matrix; per trigger, the column numbers and types and, for an enum state
 * column, the enum value of every state that is a label of the type.  Any
 * change to machines or transitions fires a statement trigger
 * (idem_config_changed) that queues a relcache invalidation of that table,
 * delivered to every session at commit; the callback then drops the whole
 * cache.  ALTER TABLE or DROP/CREATE TRIGGER on a guarded table
 * invalidates its relcache entry, which drops its guards too; a change to
 * any enum (ALTER TYPE ... RENAME VALUE, ADD VALUE) drops the guards of
 * enum columns, which map states to values by label again.  So a DBA's
 * edit takes effect in every session without a reconnect, every session
 * reads the same labels, and the per-row cost is a hash lookup and two
 * short scans.  Column types are checked whenever a guard is built: a
 * retyped or dropped column is reported at the next write, never read as
 * the type it used to have.
 *
 * Memory.  An invalidation never frees anything by itself: dropped guards
 * are freed, and a dropped cache reset, at the start of the next
 * GuardGet().  A caller that holds a guard across code that may build
 * guards (idem_transition, across its SELECT ... FOR UPDATE) pins it: a
 * pinned guard, and the machine it points to, outlive their removal from
 * the cache until unpinned, which an aborted (sub)transaction does too.
 *
 * Most UPDATEs do not reach the trigger: guard_update.c plans them to
 * apply the same rules (GuardJudge) themselves.  The trigger remains for
 * INSERT and COPY and for every UPDATE that cannot check itself.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_enum.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "parser/parse_relation.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/acl.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "guard.h"
#include "idempotency.h"

PG_FUNCTION_INFO_V1(idem_guard_trigger);
PG_FUNCTION_INFO_V1(idem_config_changed);

/* A slot of the guard cache; the guard lives apart, so a pinned one can outlive it. */
typedef struct GuardSlot
{
	Oid			tgoid;			/* hash key: the trigger */
	GuardEntry *entry;			/* its guard */
} GuardSlot;

/* A pin: a guard held by a call, and the subtransaction that took it. */
typedef struct GuardPinRef
{
	GuardEntry *entry;			/* the pinned guard */
	SubTransactionId subid;		/* where the pin was taken */
} GuardPinRef;

static MemoryContext guard_cxt = NULL;
static HTAB *machine_cache = NULL;
static HTAB *guard_cache = NULL;
static Oid	machines_relid = InvalidOid;
static Oid	transitions_relid = InvalidOid;
static bool callbacks_registered = false;

/* Guards dropped from the cache, freed at the next GuardGet() unless pinned. */
static GuardEntry *dead_guards = NULL;

/* Pins held now, and the caches dropped while some were held. */
static GuardPinRef *pin_refs = NULL;
static int	npins = 0;
static int	max_pins = 0;
static MemoryContext retired_cxt = NULL;

/*
 * Bumped whenever the callback drops anything.  Building a cache entry
 * reads catalogs, which may deliver invalidations midway; a builder that
 * sees the generation move starts again.
 */
static uint64 cache_generation = 0;

/*
 * Set when machines changed.  The memory is only released at the start of
 * the next GuardGet(), so that a trigger call holding pointers into the
 * cache (an error message reading the machine, say) never sees it freed
 * under its feet by an invalidation taken in midway.
 */
static bool cache_stale = false;

/* Take a guard out of the cache; it is freed later (drop_dead_guards). */
static void
drop_guard(GuardSlot *slot)
{
	GuardEntry *entry = slot->entry;

	hash_search(guard_cache, &slot->tgoid, HASH_REMOVE, NULL);
	entry->next_dead = dead_guards;
	dead_guards = entry;
}

/*
 * Relcache invalidation: machines or transitions changed (or everything
 * was invalidated): drop all; a guarded table changed: drop its guards.
 */
static void
guard_relcache_callback(Datum arg, Oid relid)
{
	if (guard_cxt == NULL)
		return;
	cache_generation++;
	if (relid == InvalidOid || relid == machines_relid || relid == transitions_relid)
	{
		cache_stale = true;
		return;
	}
	if (guard_cache != NULL && !cache_stale)
	{
		HASH_SEQ_STATUS status;
		GuardSlot  *slot;

		hash_seq_init(&status, guard_cache);
		while ((slot = hash_seq_search(&status)) != NULL)
			if (slot->entry->relid == relid)
				drop_guard(slot);
	}
}

/*
 * pg_enum changed (a label renamed or added, a type created or dropped):
 * guards of enum columns map their states to labels again.
 */
static void
guard_enum_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	HASH_SEQ_STATUS status;
	GuardSlot  *slot;

	if (guard_cxt == NULL || guard_cache == NULL || cache_stale)
		return;
	cache_generation++;
	hash_seq_init(&status, guard_cache);
	while ((slot = hash_seq_search(&status)) != NULL)
		if (slot->entry->state_is_enum)
			drop_guard(slot);
}

/* Free the dropped guards nobody pins; the pinned wait for GuardUnpin(). */
static void
drop_dead_guards(void)
{
	GuardEntry **link = &dead_guards;

	while (*link != NULL)
	{
		GuardEntry *entry = *link;

		if (entry->pins > 0)
		{
			link = &entry->next_dead;
			continue;
		}
		*link = entry->next_dead;
		if (entry->state_enum)
			pfree(entry->state_enum);
		pfree(entry);
	}
}

/* Release pins: all of them, or those taken in subtransaction subid or below. */
static void
release_pins(SubTransactionId subid)
{
	int			kept = 0;

	for (int i = 0; i < npins; i++)
	{
		if (subid == InvalidSubTransactionId || pin_refs[i].subid >= subid)
			pin_refs[i].entry->pins--;
		else
			pin_refs[kept++] = pin_refs[i];
	}
	npins = kept;
	if (npins == 0 && retired_cxt != NULL)
		MemoryContextDeleteChildren(retired_cxt);
}

/* A call that pinned a guard failed: its pins go with its (sub)transaction. */
static void
guard_xact_callback(XactEvent event, void *arg)
{
	release_pins(InvalidSubTransactionId);
}

static void
guard_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		release_pins(mySubid);
}

static void
ensure_caches(void)
{
	HASHCTL		ctl;

	if (cache_stale)
	{
		if (npins == 0)
			MemoryContextReset(guard_cxt);
		else
		{
			/* Pinned guards point into it: keep it until they are unpinned. */
			if (retired_cxt == NULL)
				retired_cxt = AllocSetContextCreate(TopMemoryContext,
													"idempotency retired guards",
													ALLOCSET_SMALL_SIZES);
			MemoryContextSetParent(guard_cxt, retired_cxt);
			guard_cxt = NULL;
		}
		machine_cache = NULL;
		guard_cache = NULL;
		dead_guards = NULL;
		cache_stale = false;
	}
	else if (dead_guards != NULL)
		drop_dead_guards();
	if (!callbacks_registered)
	{
		IdemOnRelcacheChange(guard_relcache_callback);
		CacheRegisterSyscacheCallback(ENUMOID, guard_enum_callback, (Datum) 0);
		RegisterXactCallback(guard_xact_callback, NULL);
		RegisterSubXactCallback(guard_subxact_callback, NULL);
		callbacks_registered = true;
	}
	if (guard_cxt == NULL)
		guard_cxt = AllocSetContextCreate(TopMemoryContext, "idempotency guards",
										  ALLOCSET_SMALL_SIZES);
	if (machine_cache == NULL)
	{
		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = NAMEDATALEN * 2;
		ctl.entrysize = sizeof(GuardMachine);
		ctl.hcxt = guard_cxt;
		machine_cache = hash_create("idempotency machines", 16, &ctl,
									HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	}
	if (guard_cache == NULL)
	{
		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(GuardSlot);
		ctl.hcxt = guard_cxt;
		guard_cache = hash_create("idempotency guards", 16, &ctl,
								  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
}

/*
 * Keep a guard, and its machine, alive across code that may rebuild the
 * cache (user code run by a query, say) until GuardUnpin() or the end of
 * the (sub)transaction that pinned it.
 */
void
GuardPin(GuardEntry *g)
{
	if (npins == max_pins)
	{
		max_pins = Max(8, max_pins * 2);
		pin_refs = pin_refs == NULL ?
			MemoryContextAlloc(TopMemoryContext, sizeof(GuardPinRef) * max_pins) :
			repalloc(pin_refs, sizeof(GuardPinRef) * max_pins);
	}
	pin_refs[npins].entry = g;
	pin_refs[npins].subid = GetCurrentSubTransactionId();
	npins++;
	g->pins++;
}

/* Let go of a pinned guard (the most recent pin of it). */
void
GuardUnpin(GuardEntry *g)
{
	for (int i = npins - 1; i >= 0; i--)
		if (pin_refs[i].entry == g)
		{
			memmove(&pin_refs[i], &pin_refs[i + 1], sizeof(GuardPinRef) * (npins - i - 1));
			npins--;
			g->pins--;
			if (npins == 0 && retired_cxt != NULL)
				MemoryContextDeleteChildren(retired_cxt);
			return;
		}
	elog(ERROR, "guard %u is not pinned", g->tgoid);
}

/* Index of a state name, or -1. */
static int
state_index(const GuardMachine *m, const char *s, int len)
{
	for (int i = 0; i < m->nstates; i++)
		if (m->state_lens[i] == len && memcmp(m->states[i], s, len) == 0)
			return i;
	return -1;
}

/* What a machine is read with (fully qualified; plans kept). */
static const IdemPlanDef edges_def = {
	"SELECT from_state, to_state FROM idempotency.transitions"
	" WHERE machine OPERATOR(pg_catalog.=) $1", 1, {TEXTOID}
};
static const IdemPlanDef initial_def = {
	"SELECT pg_catalog.unnest(initial_states) FROM idempotency.machines"
	" WHERE name OPERATOR(pg_catalog.=) $1", 1, {TEXTOID}
};
static SPIPlanPtr edges_plan = NULL;
static SPIPlanPtr initial_plan = NULL;

/* A string made inside SPI, copied to the memory of SPI's caller. */
static char *
spi_copy(const char *s)
{
	size_t		len = strlen(s) + 1;

	return memcpy(SPI_palloc(len), s, len);
}

/*
 * Load a machine from idempotency.machines and idempotency.transitions.
 * Everything is read first; the cache entry is made last, with no catalog
 * access in between, so that no invalidation can pull it away.
 */
static GuardMachine *
load_machine(const char *name)
{
	GuardMachine *m;
	GuardMachine local;
	bool		found;
	Datum		arg;
	Snapshot	snapshot;
	int			n = 0;
	uint64		nedges;
	char	  **from;
	char	  **to;
	MemoryContext old;

	if (strlen(name) >= NAMEDATALEN * 2)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("machine name \"%s\" is too long", name),
				 errhint("Use a name shorter than %d bytes.", NAMEDATALEN * 2)));

	m = hash_search(machine_cache, name, HASH_FIND, NULL);
	if (m != NULL)
		return m;

	if (!OidIsValid(machines_relid))
	{
		Oid			nsp = get_namespace_oid("idempotency", false);

		machines_relid = get_relname_relid("machines", nsp);
		transitions_relid = get_relname_relid("transitions", nsp);
	}

	/* Read the edges and initial states into this call's memory. */
	arg = CStringGetTextDatum(name);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* Edges and initial states from one snapshot, so that they agree. */
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	nedges = IdemReadLatest(&edges_def, &edges_plan, &arg, snapshot);
	if (nedges == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("machine \"%s\" of a guard does not exist or has no transitions", name),
				 errhint("Define it with idem_machine(), or remove the guard with idem_unguard().")));
	from = SPI_palloc(sizeof(char *) * nedges);
	to = SPI_palloc(sizeof(char *) * nedges);
	memset(&local, 0, sizeof(local));
	local.states = SPI_palloc(sizeof(char *) * nedges * 2);
	local.state_lens = SPI_palloc(sizeof(int) * nedges * 2);
	for (uint64 i = 0; i < nedges; i++)
	{
		/* Copied out of SPI's memory, which SPI_finish frees. */
		from[i] = spi_copy(SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
		to[i] = spi_copy(SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2));
		for (int c = 0; c < 2; c++)
		{
			char	   *st = c == 0 ? from[i] : to[i];

			local.nstates = n;
			if (state_index(&local, st, strlen(st)) < 0)
			{
				local.states[n] = st;
				local.state_lens[n++] = strlen(st);
			}
		}
	}
	local.nstates = n;
	local.initial = SPI_palloc(sizeof(bool) * n);
	memset(local.initial, 0, sizeof(bool) * n);
	(void) IdemReadLatest(&initial_def, &initial_plan, &arg, snapshot);
	UnregisterSnapshot(snapshot);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		char	   *st = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		int			si = st ? state_index(&local, st, strlen(st)) : -1;

		if (si >= 0)
			local.initial[si] = true;
	}
	if (SPI_processed == 0)
		local.nstates = -1;		/* initial states still to be derived */
	SPI_finish();

	/* Build the entry: no catalog access from here on. */
	ensure_caches();
	old = MemoryContextSwitchTo(guard_cxt);
	m = hash_search(machine_cache, name, HASH_ENTER, &found);
	m->nstates = n;
	m->states = palloc(sizeof(char *) * n);
	m->state_lens = palloc(sizeof(int) * n);
	for (int i = 0; i < n; i++)
	{
		m->states[i] = pstrdup(local.states[i]);
		m->state_lens[i] = local.state_lens[i];
	}
	m->initial = palloc(sizeof(bool) * n);
	m->terminal = palloc(sizeof(bool) * n);
	m->edges = palloc0(sizeof(bool) * n * n);
	for (int i = 0; i < n; i++)
		m->terminal[i] = true;
	for (uint64 i = 0; i < nedges; i++)
	{
		int			fi = state_index(m, from[i], strlen(from[i]));
		int			ti = state_index(m, to[i], strlen(to[i]));

		m->edges[fi * n + ti] = true;
		m->terminal[fi] = false;
	}
	for (int t = 0; t < n; t++)
	{
		bool		reached = false;

		for (int f = 0; f < n; f++)
			reached |= m->edges[f * n + t];
		/* As set in machines.initial_states, or: no transition leads in. */
		m->initial[t] = local.nstates < 0 ? !reached : local.initial[t];
	}
	MemoryContextSwitchTo(old);
	return m;
}

/*
 * A column a guard names, which must still exist with a type the guard can
 * read (the table may have been altered since idem_guard(), or the trigger
 * attached by hand): anything else is refused here, before a value of the
 * column is ever looked at.
 */
static AttrNumber
guarded_column(Relation rel, Trigger *tg, bool state, Oid *type)
{
	const char *name = tg->tgargs[state ? 1 : 2];
	AttrNumber	att = attnameAttNum(rel, name, false);

	if (att == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("%s column \"%s\" of guarded table \"%s\" does not exist",
						state ? "state" : "version", name, RelationGetRelationName(rel)),
				 errhint("Guard the table again with idem_guard(), naming its columns.")));
	*type = TupleDescAttr(RelationGetDescr(rel), att - 1)->atttypid;
	if (state ? !(*type == TEXTOID || *type == VARCHAROID || type_is_enum(*type)) :
		!(*type == INT4OID || *type == INT8OID))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("%s column \"%s\" of guarded table \"%s\" has type %s",
						state ? "state" : "version", name, RelationGetRelationName(rel),
						format_type_be(*type)),
				 errhint(state ?
						 "A state column must be text, varchar or an enum: change the column back, or remove the guard with idem_unguard()." :
						 "A version column must be int or bigint: change the column back, or guard the table again with idem_guard().")));
	return att;
}

/* The value of an enum label, or InvalidOid if the type has no such label. */
static Oid
enum_label(Oid type, const char *label)
{
	HeapTuple	tup;
	Oid			value = InvalidOid;

	if (strlen(label) >= NAMEDATALEN)
		return InvalidOid;
	tup = SearchSysCache2(ENUMTYPOIDNAME, ObjectIdGetDatum(type), CStringGetDatum(label));
	if (HeapTupleIsValid(tup))
	{
		value = ((Form_pg_enum) GETSTRUCT(tup))->oid;
		ReleaseSysCache(tup);
	}
	return value;
}

/*
 * The guard behind a trigger of a table, from the cache or built now.
 */
GuardEntry *
GuardGet(Trigger *tg, Relation rel)
{
	GuardSlot  *slot;
	bool		found;
	GuardEntry	built;
	GuardEntry *g;
	Trigger		trigger;
	char	   *args[4];

	ensure_caches();
	slot = hash_search(guard_cache, &tg->tgoid, HASH_FIND, NULL);
	if (slot != NULL)
		return slot->entry;

	if (tg->tgnargs != 4)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("trigger \"%s\" on \"%s\" must have 4 arguments", tg->tgname,
						RelationGetRelationName(rel)),
				 errhint("Install guards with idem_guard().")));

	/*
	 * tg may point into the relcache entry's trigger list, which a rebuild
	 * taken in by a catalog read below frees: work from a copy.
	 */
	trigger = *tg;
	for (int i = 0; i < 4; i++)
		args[i] = pstrdup(tg->tgargs[i]);
	trigger.tgargs = args;
	trigger.tgname = pstrdup(tg->tgname);
	tg = &trigger;

	for (;;)
	{
		uint64		generation = cache_generation;
		int			n;
		char	  **names;

		ensure_caches();		/* a reset in a previous pass dropped them */
		memset(&built, 0, sizeof(built));
		built.tgoid = tg->tgoid;
		built.relid = RelationGetRelid(rel);
		built.tgenabled = tg->tgenabled;
		built.state_att = guarded_column(rel, tg, true, &built.state_type);
		built.state_is_enum = built.state_type != TEXTOID && built.state_type != VARCHAROID;
		if (tg->tgargs[2][0] != '\0')
			built.version_att = guarded_column(rel, tg, false, &built.version_type);
		built.strict_version = strcmp(tg->tgargs[3], "strict") == 0;
		built.machine = load_machine(tg->tgargs[0]);

		/*
		 * Catalog reads below may take in an invalidation that frees the
		 * machine; work from copies of its state names, and start again
		 * if the generation moved.
		 */
		n = built.machine->nstates;
		names = palloc(sizeof(char *) * n);
		for (int i = 0; i < n; i++)
			names[i] = pstrdup(built.machine->states[i]);

		/*
		 * Enum states by label: a state the type has no label for (renamed
		 * away, say) matches no value; a label the machine lacks is no state.
		 */
		if (built.state_is_enum)
		{
			Oid		   *values = palloc(sizeof(Oid) * n);

			for (int i = 0; i < n; i++)
				values[i] = enum_label(built.state_type, names[i]);
			if (generation == cache_generation)
			{
				built.state_enum = MemoryContextAlloc(guard_cxt, sizeof(Oid) * n);
				memcpy(built.state_enum, values, sizeof(Oid) * n);
			}
		}
		if (generation == cache_generation)
			break;
		/* Invalidated while building: what we hold may be gone. */
	}

	g = MemoryContextAlloc(guard_cxt, sizeof(GuardEntry));
	*g = built;
	slot = hash_search(guard_cache, &tg->tgoid, HASH_ENTER, &found);
	slot->entry = g;
	return g;
}

/*
 * The guard of trigger tgoid on table relid (which the caller's UPDATE has
 * locked already, so the lock taken here costs nothing).
 */
GuardEntry *
GuardGetByOid(Oid relid, Oid tgoid)
{
	GuardSlot  *slot;
	GuardEntry *g = NULL;
	Relation	rel;
	TriggerDesc *td;

	ensure_caches();
	slot = hash_search(guard_cache, &tgoid, HASH_FIND, NULL);
	if (slot != NULL)
		return slot->entry;
	rel = table_open(relid, AccessShareLock);
	td = rel->trigdesc;
	for (int i = 0; td != NULL && i < td->numtriggers; i++)
		if (td->triggers[i].tgoid == tgoid)
		{
			g = GuardGet(&td->triggers[i], rel);
			break;
		}
	table_close(rel, NoLock);
	if (g == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("guard of \"%s\" no longer exists", get_rel_name(relid)),
				 errhint("Run the statement again.")));
	return g;
}

/*
 * The guard trigger of a table (idem_guard, calling our trigger function),
 * or NULL.
 */
Trigger *
GuardFindTrigger(Relation rel)
{
	TriggerDesc *td = rel->trigdesc;
	Oid			fn = GuardTriggerFunction();

	for (int i = 0; td != NULL && OidIsValid(fn) && i < td->numtriggers; i++)
	{
		Trigger    *tg = &td->triggers[i];

		if (tg->tgfoid == fn && tg->tgnargs == 4 && strcmp(tg->tgname, "idem_guard") == 0)
			return tg;
	}
	return NULL;
}

/* The machine state named s, or -1. */
int
GuardStateByName(GuardEntry *g, const char *s)
{
	return state_index(g->machine, s, strlen(s));
}

/*
 * Moves whenever a cached guard may have been dropped: a GuardEntry
 * pointer kept by a caller stays good while this does not change.
 */
uint64
GuardGeneration(void)
{
	return cache_generation;
}

/* Would the guard's trigger fire now (ALTER TABLE ... ENABLE/DISABLE)? */
bool
GuardFires(const GuardEntry *g)
{
	if (SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA)
		return g->tgenabled == TRIGGER_FIRES_ON_REPLICA ||
			g->tgenabled == TRIGGER_FIRES_ALWAYS;
	return g->tgenabled == TRIGGER_FIRES_ON_ORIGIN ||
		g->tgenabled == TRIGGER_FIRES_ALWAYS;
}

/*
 * The machine state of a state column value, or -1 if it is none (then
 * *label names it, unless the value is NULL).
 */
int
GuardState(GuardEntry *g, Datum d, bool isnull, char **label)
{
	*label = NULL;
	if (isnull)
		return -1;
	if (g->state_is_enum)
	{
		Oid			v = DatumGetObjectId(d);

		for (int i = 0; i < g->machine->nstates; i++)
			if (g->state_enum[i] == v)
				return i;
		*label = DatumGetCString(DirectFunctionCall1(enum_out, d));
		return -1;
	}
	else
	{
		text	   *t = DatumGetTextPP(d);
		int			i = state_index(g->machine, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));

		if (i < 0)
			*label = text_to_cstring(t);
		return i;
	}
}

/* The machine state of a row in a slot. */
static int
row_state(GuardEntry *g, TupleTableSlot *slot, bool *isnull, char **label)
{
	Datum		d = slot_getattr(slot, g->state_att, isnull);

	return GuardState(g, d, *isnull, label);
}

static const char *
state_name(GuardEntry *g, int i, const char *unknown)
{
	return i >= 0 ? g->machine->states[i] : unknown;
}

/*
 * The states a message lists: the first MESSAGE_STATES of those picked,
 * each cut to MESSAGE_STATE_BYTES, then how many more, so that a machine
 * of many long states cannot make every refusal megabytes long.
 */
#define MESSAGE_STATES		10
#define MESSAGE_STATE_BYTES	64

static char *
state_list(GuardMachine *m, const bool *picked)
{
	StringInfoData buf;
	int			n = 0;

	initStringInfo(&buf);
	for (int i = 0; i < m->nstates; i++)
	{
		const char *st = m->states[i];
		int			len = strlen(st);
		int			cut;

		if (!picked[i] || n++ >= MESSAGE_STATES)
			continue;
		cut = len > MESSAGE_STATE_BYTES ? pg_mbcliplen(st, len, MESSAGE_STATE_BYTES) : len;
		appendStringInfo(&buf, "%s\"%.*s%s\"", buf.len ? ", " : "", cut, st,
						 cut < len ? "..." : "");
	}
	if (n > MESSAGE_STATES)
		appendStringInfo(&buf, " and %d more", n - MESSAGE_STATES);
	return buf.data;
}

/* The states a row in state `from` may move to, for messages. */
static char *
allowed_from(GuardMachine *m, int from)
{
	if (from < 0)
		return pstrdup("");
	return state_list(m, &m->edges[from * m->nstates]);
}

static char *
initial_states(GuardMachine *m)
{
	return state_list(m, m->initial);
}

/* A state name for a message: cut as the lists of states cut them. */
char *
GuardClipName(const char *name)
{
	int			len = strlen(name);
	int			cut;

	if (len <= MESSAGE_STATE_BYTES)
		return pstrdup(name);
	cut = pg_mbcliplen(name, len, MESSAGE_STATE_BYTES);
	return psprintf("%.*s...", cut, name);
}

/* Every state of a machine, for a message. */
char *
GuardStateNames(GuardMachine *m)
{
	bool	   *all = palloc(sizeof(bool) * Max(m->nstates, 1));
	char	   *list;

	for (int i = 0; i < m->nstates; i++)
		all[i] = true;
	list = state_list(m, all);
	pfree(all);
	return list;
}

/*
 * Are two values of a type the same?  Varlena values are compared by
 * content, whatever their header or compression.
 */
bool
GuardSameValue(Datum a, Datum b, int16 typlen, bool typbyval)
{
	if (typlen == -1)
	{
		struct varlena *va = (struct varlena *) DatumGetPointer(a);
		struct varlena *vb = (struct varlena *) DatumGetPointer(b);

		if (va == vb)
			return true;
		if (VARATT_IS_EXTENDED(va) || VARATT_IS_EXTENDED(vb))
		{
			if (VARATT_IS_EXTERNAL(va) && VARATT_IS_EXTERNAL(vb) &&
				VARSIZE_EXTERNAL(va) == VARSIZE_EXTERNAL(vb) &&
				memcmp(va, vb, VARSIZE_EXTERNAL(va)) == 0)
				return true;	/* the same toasted value, untouched */
			va = pg_detoast_datum_packed(va);
			vb = pg_detoast_datum_packed(vb);
		}
		return VARSIZE_ANY_EXHDR(va) == VARSIZE_ANY_EXHDR(vb) &&
			memcmp(VARDATA_ANY(va), VARDATA_ANY(vb), VARSIZE_ANY_EXHDR(va)) == 0;
	}
	return datumIsEqual(a, b, typbyval, typlen);
}

/*
 * Does the new row differ from the old in anything but the version?
 */
static bool
row_changed(GuardEntry *g, TupleTableSlot *oldslot, TupleTableSlot *newslot, TupleDesc desc)
{
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		bool		oldnull;
		bool		newnull;
		Datum		o;
		Datum		n;

		if (att->attisdropped || i + 1 == g->version_att || i + 1 == g->state_att)
			continue;
		o = slot_getattr(oldslot, i + 1, &oldnull);
		n = slot_getattr(newslot, i + 1, &newnull);
		if (oldnull != newnull || (!oldnull && !GuardSameValue(o, n, att->attlen, att->attbyval)))
			return true;
	}
	return false;
}

static int64
version_of(GuardEntry *g, TupleTableSlot *slot)
{
	bool		isnull;
	Datum		d = slot_getattr(slot, g->version_att, &isnull);

	if (isnull)
		return 0;
	return g->version_type == INT8OID ? DatumGetInt64(d) : DatumGetInt32(d);
}

/*
 * The version after version, for a row whose version is version.  A row at
 * the largest version its column holds is refused rather than wrapped to a
 * negative one, which a stale writer could match again.
 */
int64
GuardNextVersion(const GuardEntry *g, int64 version)
{
	bool		is_int = g->version_type == INT4OID;

	if (version >= (is_int ? PG_INT32_MAX : PG_INT64_MAX))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("version of a row of \"%s\" would pass the range of %s",
						get_rel_name(g->relid), is_int ? "int" : "bigint"),
				 is_int ? errhint("Make the version column bigint.") :
				 errhint("Set the row's version back with the guard disabled (ALTER TABLE ... DISABLE TRIGGER idem_guard) once no writer holds an old one.")));
	return version + 1;
}

/*
 * Does the update set the state the row is already in?  (Then, if it
 * changes nothing else either, it is a repeat and is skipped.)
 */
bool
GuardIsRepeat(const GuardRow *r)
{
	if (r->to_null || r->from_null)
		return false;
	return GuardSameState(r->from, r->from_label, r->to, r->to_label);
}

/*
 * Are two states (machine state numbers, or -1 with the label of a value
 * that is no state of the machine) the same?  A row left in a state the
 * machine no longer has keeps it as it is updated otherwise.
 */
bool
GuardSameState(int a, const char *a_label, int b, const char *b_label)
{
	if (a >= 0 || b >= 0)
		return a == b;
	return a_label != NULL && b_label != NULL && strcmp(a_label, b_label) == 0;
}

/*
 * The rules for an update, in order: the row keeps a state; a stale
 * version is reported before the transition (the writer acted on a row it
 * no longer has, and must read it again); then the transition itself.
 */
GuardVerdict
GuardJudge(const GuardEntry *g, const GuardRow *r)
{
	/* The row may change: what idem_transition answered may not hold. */
	IdemMemoForget();

	if (r->to_null)
		return GUARD_NO_STATE;
	if (g->version_att)
	{
		if (r->version_set && r->expected != r->old_version)
			return GUARD_STALE;
		if (!r->version_set && g->strict_version)
			return GUARD_VERSION_UNSET;
	}
	if (GuardIsRepeat(r))
		return GUARD_PASS;		/* same state, other changes: no transition */
	if (r->from >= 0 && g->machine->terminal[r->from])
		return GUARD_TERMINAL;
	if (r->from < 0 || r->to < 0 ||
		!g->machine->edges[r->from * g->machine->nstates + r->to])
		return GUARD_ILLEGAL;
	return GUARD_PASS;
}

/*
 * May the current role read column att of table relid?  Decided as
 * PostgreSQL decides what a constraint error may show of a row
 * (ExecBuildSlotValueDescription): SELECT on the table or on the column,
 * and no row-level security in force for the role.  A partition's rows can
 * also be read through its ancestors, where the column may have another
 * number.  Only refusals ask, so the catalog lookups cost nothing that
 * matters.
 */
static bool
column_readable(Oid relid, AttrNumber att)
{
	List	   *rels = list_make1_oid(relid);
	const char *name = get_attname(relid, att, false);
	ListCell   *lc;

	if (get_rel_relispartition(relid))
		rels = list_concat(rels, get_partition_ancestors(relid));
	foreach(lc, rels)
	{
		Oid			rel = lfirst_oid(lc);
		AttrNumber	a = rel == relid ? att : get_attnum(rel, name);

		if (a == InvalidAttrNumber || check_enable_rls(rel, InvalidOid, true) == RLS_ENABLED)
			continue;
		if (pg_class_aclcheck(rel, GetUserId(), ACL_SELECT) == ACLCHECK_OK ||
			pg_attribute_aclcheck(rel, a, GetUserId(), ACL_SELECT) == ACLCHECK_OK)
			return true;
	}
	return false;
}

/* Why a refusal names no state: the caller may not read the column. */
static int
errdetail_state_unreadable(const char *state_col)
{
	return errdetail("The row's state is left out: the current role may not read column \"%s\" of the row.",
					 state_col);
}

/*
 * A refused transition of a row whose state the caller may not read: the
 * message leaves the row's state out (and whether it is terminal), and
 * names the new state only if the statement set it.
 */
static void
refuse_unreadable(GuardEntry *g, const GuardRow *r, const char *table, const char *state_col)
{
	if (r->state_set)
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("transition of \"%s\" to \"%s\" is not allowed by machine \"%s\"",
						table, state_name(g, r->to, r->to_label), g->machine->name),
				 errdetail_state_unreadable(state_col),
				 errhint("Move the row through the states the machine allows, or change the machine with idem_machine().")));
	ereport(ERROR,
			(errcode(ERRCODE_CHECK_VIOLATION),
			 errmsg("update of a row of \"%s\" is not allowed by machine \"%s\"",
					table, g->machine->name),
			 errdetail_state_unreadable(state_col),
			 errhint("Move the row through the states the machine allows, or change the machine with idem_machine().")));
}

/* The detail of an illegal transition: what is allowed, or what is no state. */
static int
errdetail_illegal(GuardEntry *g, const GuardRow *r, const char *from_name, const char *to_name)
{
	if (r->from_null)
		return errdetail("The row has no state.");
	if (r->from < 0)
		return errdetail("\"%s\" is not a state of machine \"%s\".", from_name, g->machine->name);
	if (r->to < 0)
		return errdetail("\"%s\" is not a state of machine \"%s\"; from \"%s\" it allows: %s.",
						 to_name, g->machine->name, from_name, allowed_from(g->machine, r->from));
	return errdetail("From \"%s\" it allows: %s.", from_name, allowed_from(g->machine, r->from));
}

/*
 * Raise the error for a verdict other than GUARD_PASS.  Values of the row
 * that the caller may not read are left out; the statement's own values
 * (the version it expected, the state it set) are shown.
 */
void
GuardRefuse(GuardEntry *g, const GuardRow *r, GuardVerdict v)
{
	const char *table = get_rel_name(g->relid);
	const char *state_col = get_attname(g->relid, g->state_att, false);
	const char *version_col = g->version_att ? get_attname(g->relid, g->version_att, false) : NULL;
	const char *from_name = state_name(g, r->from, r->from_null ? "(null)" : r->from_label);
	const char *to_name = state_name(g, r->to, r->to_label);
	bool		unknown_label = (r->from < 0 && !r->from_null) || r->to < 0;

	IdemCount(v == GUARD_STALE ? IDEM_STALE_VERSIONS : IDEM_GUARD_REJECTIONS);
	switch (v)
	{
		case GUARD_NO_STATE:
			ereport(ERROR,
					(errcode(ERRCODE_NOT_NULL_VIOLATION),
					 errmsg("row of \"%s\" cannot lose its state", table),
					 errdetail("Column \"%s\" would become null.", state_col),
					 errhint("Set a state that machine \"%s\" allows.", g->machine->name)));
			break;
		case GUARD_STALE:
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("row of \"%s\" has changed since it was read", table),
					 column_readable(g->relid, g->version_att) ?
					 errdetail("The update expected version %lld; the row is at version %lld.",
							   (long long) r->expected, (long long) r->old_version) :
					 errdetail("The update expected version %lld; the row is at another version.",
							   (long long) r->expected),
					 errhint("Read the row again and retry with its current version.")));
			break;
		case GUARD_VERSION_UNSET:
			ereport(ERROR,
					(errcode(ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION),
					 errmsg("update of \"%s\" must set version column \"%s\"", table, version_col),
					 errhint("Add SET %s = <the version you read> to the UPDATE.", version_col)));
			break;
		case GUARD_TERMINAL:
			if (!column_readable(g->relid, g->state_att))
				refuse_unreadable(g, r, table, state_col);
			ereport(ERROR,
					(errcode(ERRCODE_CHECK_VIOLATION),
					 errmsg("row of \"%s\" is in terminal state \"%s\" of machine \"%s\"",
							table, from_name, g->machine->name),
					 errdetail("It cannot move to \"%s\".", to_name),
					 errhint("A terminal state has no transitions out; add one to the machine if it should.")));
			break;
		case GUARD_ILLEGAL:
			if (!column_readable(g->relid, g->state_att))
				refuse_unreadable(g, r, table, state_col);
			ereport(ERROR,
					(errcode(ERRCODE_CHECK_VIOLATION),
					 errmsg("transition of \"%s\" from \"%s\" to \"%s\" is not allowed by machine \"%s\"",
							table, from_name, to_name, g->machine->name),
					 errdetail_illegal(g, r, from_name, to_name),
					 unknown_label && g->state_is_enum ?
					 errhint("Use a state of the machine; if a label of type %s was renamed with ALTER TYPE ... RENAME VALUE, rename the state in the machine too (idem_machine()).",
							 format_type_be(g->state_type)) :
					 errhint("Move the row through the states the machine allows, or change the machine with idem_machine().")));
			break;
		case GUARD_PASS:
			break;
	}
	elog(ERROR, "GuardRefuse called for an allowed update");
}

/*
 * The row in slot with its version set: formed from the slot's values, which
 * the executor has already taken apart, rather than by taking the tuple
 * apart again.  Allocated in the per-tuple context the trigger runs in.
 */
static HeapTuple
with_version(GuardEntry *g, TupleTableSlot *slot, TupleDesc desc, int64 version)
{
	int			natts = desc->natts;
	Datum	   *values = palloc(sizeof(Datum) * natts);
	bool	   *nulls = palloc(sizeof(bool) * natts);

	slot_getallattrs(slot);
	memcpy(values, slot->tts_values, sizeof(Datum) * natts);
	memcpy(nulls, slot->tts_isnull, sizeof(bool) * natts);
	values[g->version_att - 1] = g->version_type == INT4OID ?
		Int32GetDatum((int32) version) : Int64GetDatum(version);
	nulls[g->version_att - 1] = false;
	return heap_form_tuple(desc, values, nulls);
}

/*
 * Where a fixed-width attribute's bytes lie in a heap tuple, or NULL if it
 * is null or not stored (a column added since the row was written).  Walks
 * the attributes before it the way heap_deform_tuple does.
 */
static char *
attribute_bytes(HeapTuple tuple, TupleDesc desc, int attnum)
{
	HeapTupleHeader tup = tuple->t_data;
	bool		hasnulls = HeapTupleHasNulls(tuple);
	char	   *tp = (char *) tup + tup->t_hoff;
	uint32		off = 0;

	if (attnum > HeapTupleHeaderGetNatts(tup))
		return NULL;
	for (int i = 0; i < attnum; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (hasnulls && att_isnull(i, tup->t_bits))
		{
			if (i == attnum - 1)
				return NULL;
			continue;
		}
		off = att_align_pointer(off, att->attalign, att->attlen, tp + off);
		if (i == attnum - 1)
			return tp + off;
		off = att_addlength_pointer(off, att->attlen, tp + off);
	}
	return NULL;
}

/*
 * Set the version of the row an UPDATE is about to write.  For a heap
 * table, the new row handed to the trigger is the new slot's own
 * materialized tuple: overwriting the fixed-width version where it lies,
 * and making the slot take the tuple apart afresh, spares a second copy of
 * the row per update (PostgreSQL keeps a returned tuple that is the one it
 * passed in).  Anything else (another table access method, a NULL or
 * missing version) gets a new tuple.
 */
static HeapTuple
bump_version(GuardEntry *g, TriggerData *td, TupleDesc desc, int64 version)
{
	TupleTableSlot *slot = td->tg_newslot;
	HeapTuple	tuple = td->tg_newtuple;
	char	   *bytes;

	if ((TTS_IS_BUFFERTUPLE(slot) || TTS_IS_HEAPTUPLE(slot)) &&
		((HeapTupleTableSlot *) slot)->tuple == tuple &&
		(g->version_type == INT8OID || version <= PG_INT32_MAX) &&
		(bytes = attribute_bytes(tuple, desc, g->version_att)) != NULL)
	{
		if (g->version_type == INT8OID)
			*(int64 *) bytes = version;
		else
			*(int32 *) bytes = (int32) version;
		slot->tts_nvalid = 0;	/* its taken-apart values are stale now */
		((HeapTupleTableSlot *) slot)->off = 0;
		return tuple;
	}
	return with_version(g, slot, desc, version);
}

/*
 * idem_guard_trigger(): BEFORE INSERT OR UPDATE FOR EACH ROW.
 */
Datum
idem_guard_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	GuardEntry *g;
	TupleDesc	desc;
	const char *table;
	bool		isnull;
	char	   *unknown;
	int			to;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) || TRIGGER_FIRED_BY_DELETE(td->tg_event) ||
		TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("idem_guard_trigger must fire BEFORE INSERT OR UPDATE FOR EACH ROW"),
				 errhint("Install guards with idem_guard().")));

	g = GuardGet(td->tg_trigger, td->tg_relation);
	desc = RelationGetDescr(td->tg_relation);
	table = RelationGetRelationName(td->tg_relation);

	if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
	{
		HeapTuple	newtup = td->tg_trigtuple;

		/*
		 * The second half of a row's move to another partition: judged, and
		 * its version bumped, by the guard of the partition it left.
		 */
		if (GuardMoveTake(td))
			return PointerGetDatum(newtup);

		to = row_state(g, td->tg_trigslot, &isnull, &unknown);

		if (isnull || to < 0 || !g->machine->initial[to])
			IdemCount(IDEM_GUARD_REJECTIONS);
		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_NOT_NULL_VIOLATION),
					 errmsg("new row of \"%s\" has no state", table),
					 errdetail("Column \"%s\" is null.", NameStr(TupleDescAttr(desc, g->state_att - 1)->attname)),
					 errhint("Insert rows in an initial state of machine \"%s\": %s.",
							 g->machine->name, initial_states(g->machine))));
		if ((to < 0 || !g->machine->initial[to]) &&
			!column_readable(g->relid, g->state_att))
			ereport(ERROR,
					(errcode(ERRCODE_CHECK_VIOLATION),
					 errmsg("new row of \"%s\" must start in an initial state of machine \"%s\"",
							table, g->machine->name),
					 errdetail_state_unreadable(NameStr(TupleDescAttr(desc, g->state_att - 1)->attname)),
					 errhint("Initial states: %s.", initial_states(g->machine))));
		if (to < 0 || !g->machine->initial[to])
			ereport(ERROR,
					(errcode(ERRCODE_CHECK_VIOLATION),
					 errmsg("new row of \"%s\" must start in an initial state of machine \"%s\"",
							table, g->machine->name),
					 to < 0 ?
					 errdetail("The row starts in \"%s\", which is not a state of the machine.", unknown) :
					 errdetail("The row starts in \"%s\".", state_name(g, to, unknown)),
					 errhint("Initial states: %s.", initial_states(g->machine))));
		if (g->version_att)
			newtup = with_version(g, td->tg_trigslot, desc, 1);
		return PointerGetDatum(newtup);
	}
	else
	{
		TupleTableSlot *oldslot = td->tg_trigslot;
		TupleTableSlot *newslot = td->tg_newslot;
		GuardRow	r;
		GuardVerdict v;

		GuardMoveClear();
		memset(&r, 0, sizeof(r));
		r.from = row_state(g, oldslot, &r.from_null, &r.from_label);
		r.to = row_state(g, newslot, &r.to_null, &r.to_label);

		/* A repeat of the current state changing nothing else: skip it. */
		if (GuardIsRepeat(&r) && !row_changed(g, oldslot, newslot, desc))
			return PointerGetDatum(NULL);
		r.state_set = bms_is_member(g->state_att - FirstLowInvalidHeapAttributeNumber,
									td->tg_updatedcols);

		if (g->version_att)
		{
			r.old_version = version_of(g, oldslot);
			r.version_set = bms_is_member(g->version_att - FirstLowInvalidHeapAttributeNumber,
										  td->tg_updatedcols);
			if (r.version_set)
				r.expected = version_of(g, newslot);
		}
		v = GuardJudge(g, &r);
		if (v != GUARD_PASS)
			GuardRefuse(g, &r, v);

		/*
		 * A partition's row may be on its way to another partition (if the
		 * new row does not fit this one): say what was allowed, so that the
		 * INSERT there recognises the row instead of judging it afresh.
		 */
		if (td->tg_relation->rd_rel->relispartition)
			GuardMoveNote(td);
		if (g->version_att)
			return PointerGetDatum(bump_version(g, td, desc, GuardNextVersion(g, r.old_version)));
		return PointerGetDatum(td->tg_newtuple);
	}
}

/*
 * idem_config_changed(): AFTER ... FOR EACH STATEMENT on machines,
 * transitions and policies.  Queues a relcache invalidation of the table,
 * which every session receives at commit and answers by dropping what it
 * cached of it (machines here, policies in policy.c).
 */
Datum
idem_config_changed(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("idem_config_changed must be called as a trigger"),
				 errhint("It is installed on idempotency.machines, idempotency.transitions and idempotency.policies.")));
	CacheInvalidateRelcacheByRelid(RelationGetRelid(td->tg_relation));
	return PointerGetDatum(NULL);
}

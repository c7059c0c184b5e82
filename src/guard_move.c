/*-------------------------------------------------------------------------
 *
 * guard_move.c
 *	  Rows of a guarded partitioned table that move to another partition.
 *
 * An UPDATE of a partitioned table that makes a row leave its partition
 * runs, in PostgreSQL 15 to 18, as (ExecUpdate, ExecCrossPartitionUpdate):
 * the BEFORE UPDATE row triggers of the partition it leaves, on the locked
 * row; then a DELETE there (its BEFORE DELETE triggers, the heap tuple
 * marked as moved to another partition); then an INSERT routed from the
 * root, which fires the BEFORE INSERT row triggers of the partition it
 * enters.  The guard's UPDATE trigger judges the transition and bumps the
 * version; its INSERT trigger must then neither judge the row as new (only
 * an initial state allowed) nor start its version at 1 again.
 *
 * So the UPDATE trigger of a partition notes where the row was and which
 * slot holds its new version (GuardMoveNote), and the INSERT trigger of a
 * partition takes the note (GuardMoveTake), which holds only if all of
 * these are true:
 *
 *	- both triggers run in the same per-tuple memory of the same executor,
 *	  not reset since: the note lives in that memory and goes with it, and
 *	  the executor resets it before each row of every ModifyTable node, so
 *	  a note never outlives the row it was written for;
 *	- it is the first guard INSERT trigger there since that UPDATE trigger
 *	  (a note is taken once, and the next guard UPDATE trigger there
 *	  replaces it; triggers of statements run from triggers or functions
 *	  run in memory of their own and leave it alone);
 *	- they run with the same active snapshot and command id (a statement run
 *	  from a trigger or a function has snapshots and command ids of its own);
 *	- the row version the UPDATE trigger judged has been deleted by this
 *	  transaction as one moved to another partition: its heap tuple says
 *	  so, and only a cross-partition UPDATE deletes that way;
 *	- both partitions belong to one partitioned table, with guards of the
 *	  same machine and columns;
 *	- and the row to insert is, column for column, the new version of the
 *	  row that the UPDATE holds in its slot (with whatever BEFORE UPDATE
 *	  triggers after the guard did to it, a routing trigger say).
 *
 * A plain INSERT, by any role and in any statement, fails one of these
 * (an INSERT beside the UPDATE in one statement, through a data-modifying
 * WITH, fails the last two): it is judged as a new row.  So is a moved row
 * that a BEFORE INSERT trigger running ahead of the guard changed on its
 * way in (unless it changed it in the UPDATE's own slot, which the guard
 * cannot tell apart: triggers of the table's owner that change a row
 * around the guard are trusted, as they are for any UPDATE), and a row
 * leaving a partition of another table access method than heap.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/xact.h"
#include "catalog/partition.h"
#include "catalog/pg_am.h"
#include "commands/trigger.h"
#include "storage/bufmgr.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "guard.h"

/* What the guard of the partition a row leaves allowed. */
typedef struct GuardMove
{
	MemoryContextCallback forget;	/* drops the note with its memory */
	MemoryContext cxt;			/* the executor's per-tuple memory */
	Snapshot	snapshot;		/* the statement's active snapshot */
	CommandId	curcid;			/* and its command id */
	Oid			source;			/* the partition the row leaves */
	ItemPointerData tid;		/* the row version judged there */
	Trigger    *trigger;		/* the guard there (the executor's copy) */
	TupleTableSlot *newslot;	/* the UPDATE's slot of the new version */
	struct GuardMove *next;		/* the note of an outer executor */
} GuardMove;

/* The notes, one per executor's per-tuple memory, innermost first. */
static GuardMove *notes = NULL;

/* Take the note of memory cxt off the list; returns it, or NULL. */
static GuardMove *
unlink_note(MemoryContext cxt)
{
	for (GuardMove **link = &notes; *link != NULL; link = &(*link)->next)
		if ((*link)->cxt == cxt)
		{
			GuardMove  *m = *link;

			*link = m->next;
			return m;
		}
	return NULL;
}

/* The memory a note lives in is reset or deleted: forget the note. */
static void
forget_move(void *arg)
{
	for (GuardMove **link = &notes; *link != NULL; link = &(*link)->next)
		if (*link == arg)
		{
			*link = ((GuardMove *) arg)->next;
			return;
		}
}

/*
 * Note what the guard of a partition judged, in case the row is moving to
 * another partition.  Called by the UPDATE trigger, after the rules
 * allowed the update, in the executor's per-tuple memory.
 */
void
GuardMoveNote(TriggerData *td)
{
	GuardMove  *m;

	(void) unlink_note(CurrentMemoryContext);
	if (!ActiveSnapshotSet())
		return;
	m = palloc(sizeof(GuardMove));
	m->cxt = CurrentMemoryContext;
	m->snapshot = GetActiveSnapshot();
	m->curcid = m->snapshot->curcid;
	m->source = RelationGetRelid(td->tg_relation);
	m->tid = td->tg_trigslot->tts_tid;
	m->trigger = td->tg_trigger;
	m->newslot = td->tg_newslot;
	m->forget.func = forget_move;
	m->forget.arg = m;
	MemoryContextRegisterResetCallback(CurrentMemoryContext, &m->forget);
	m->next = notes;
	notes = m;
}

/* Forget the note of this memory: an UPDATE trigger that notes nothing. */
void
GuardMoveClear(void)
{
	if (notes != NULL)
		(void) unlink_note(CurrentMemoryContext);
}

/* Do two guards name the same machine and columns? */
static bool
same_guard(const Trigger *a, const Trigger *b)
{
	if (a->tgnargs != 4 || b->tgnargs != 4)
		return false;
	for (int i = 0; i < 4; i++)
		if (strcmp(a->tgargs[i], b->tgargs[i]) != 0)
			return false;
	return true;
}

/* The partitioned table at the top of a partition's tree. */
static Oid
partition_root(Oid relid)
{
	List	   *ancestors = get_partition_ancestors(relid);

	return ancestors == NIL ? InvalidOid : llast_oid(ancestors);
}

/*
 * Has this transaction deleted the row version at tid of relation relid as
 * one moved to another partition?  Read from the heap tuple itself, whose
 * t_ctid only a cross-partition UPDATE sets that way.
 */
static bool
moved_out(Oid relid, ItemPointer tid)
{
	Relation	rel = relation_open(relid, AccessShareLock);	/* the UPDATE's */
	HeapTupleData tuple;
	Buffer		buffer;
	bool		moved = false;

	if (rel->rd_rel->relam == HEAP_TABLE_AM_OID &&
		ItemPointerGetBlockNumber(tid) < RelationGetNumberOfBlocks(rel))
	{
		tuple.t_self = *tid;
		if (heap_fetch(rel, SnapshotAny, &tuple, &buffer, false))
		{
			HeapTupleHeader tup = tuple.t_data;

			LockBuffer(buffer, BUFFER_LOCK_SHARE);
			moved = !(tup->t_infomask & HEAP_XMAX_INVALID) &&
				!HEAP_XMAX_IS_LOCKED_ONLY(tup->t_infomask) &&
				HeapTupleHeaderIndicatesMovedPartitions(tup) &&
				TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetUpdateXid(tup));
			LockBuffer(buffer, BUFFER_LOCK_UNLOCK);
			ReleaseBuffer(buffer);
		}
	}
	relation_close(rel, NoLock);
	return moved;
}

/*
 * Is the row in slot, column for column (matched by name: partitions may
 * order their columns differently), the row in the UPDATE's slot?
 */
static bool
same_row(TupleTableSlot *slot, TupleTableSlot *updated)
{
	TupleDesc	desc = slot->tts_tupleDescriptor;
	TupleDesc	udesc = updated->tts_tupleDescriptor;
	int			matched = 0;
	int			live = 0;

	slot_getallattrs(slot);
	slot_getallattrs(updated);
	for (int u = 0; u < udesc->natts; u++)
		live += !TupleDescAttr(udesc, u)->attisdropped;
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		int			u;

		if (att->attisdropped)
			continue;
		for (u = 0; u < udesc->natts; u++)
			if (!TupleDescAttr(udesc, u)->attisdropped &&
				strcmp(NameStr(TupleDescAttr(udesc, u)->attname), NameStr(att->attname)) == 0)
				break;
		if (u == udesc->natts || TupleDescAttr(udesc, u)->atttypid != att->atttypid ||
			slot->tts_isnull[i] != updated->tts_isnull[u] ||
			(!slot->tts_isnull[i] &&
			 !GuardSameValue(slot->tts_values[i], updated->tts_values[u],
							 att->attlen, att->attbyval)))
			return false;
		matched++;
	}
	return matched == live;
}

/*
 * Is the row an INSERT trigger sees the second half of a move to another
 * partition, which the guard of the partition it left has judged and
 * whose version it has bumped?  Takes the note of this executor's row
 * either way.
 */
bool
GuardMoveTake(TriggerData *td)
{
	GuardMove  *m = notes != NULL ? unlink_note(CurrentMemoryContext) : NULL;
	Oid			dest = RelationGetRelid(td->tg_relation);

	if (m == NULL || !ActiveSnapshotSet() || GetActiveSnapshot() != m->snapshot ||
		m->snapshot->curcid != m->curcid || !td->tg_relation->rd_rel->relispartition ||
		dest == m->source || !same_guard(m->trigger, td->tg_trigger))
		return false;
	return partition_root(dest) == partition_root(m->source) &&
		moved_out(m->source, &m->tid) && same_row(td->tg_trigslot, m->newslot);
}

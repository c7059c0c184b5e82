/*-------------------------------------------------------------------------
 *
 * guard.h
 *	  What the guard trigger (guard.c) and the guarded-UPDATE planning
 *	  (guard_update.c) share: the cached machines and guards, and the one
 *	  set of rules both apply to a row.
 *
 *-------------------------------------------------------------------------
 */
#ifndef IDEM_GUARD_H
#define IDEM_GUARD_H

#include "commands/trigger.h"
#include "utils/rel.h"

#include "compat.h"

/* A machine, as the row checks need it. */
typedef struct GuardMachine
{
	char		name[NAMEDATALEN * 2];	/* hash key (truncated names are refused) */
	int			nstates;		/* number of states */
	char	  **states;			/* their names */
	int		   *state_lens;		/* and lengths */
	bool	   *initial;		/* may start in this state */
	bool	   *terminal;		/* no transition leads out */
	bool	   *edges;			/* nstates x nstates: edges[from * n + to] */
} GuardMachine;

/*
 * A guard (one trigger), cached by trigger OID.  A pointer to one stays
 * good while GuardGeneration() does not move, or while it is pinned.
 */
typedef struct GuardEntry
{
	Oid			tgoid;			/* its trigger */
	Oid			relid;			/* the guarded table */
	char		tgenabled;		/* the trigger's pg_trigger.tgenabled */
	GuardMachine *machine;		/* its machine */
	AttrNumber	state_att;		/* state column */
	Oid			state_type;		/* its type */
	bool		state_is_enum;	/* enum (compare OIDs) or text */
	Oid		   *state_enum;		/* per machine state, its enum value (InvalidOid: no such label) */
	AttrNumber	version_att;	/* version column, or 0 */
	Oid			version_type;	/* INT4OID or INT8OID */
	bool		strict_version; /* the UPDATE must set the version */
	int			pins;			/* calls holding it across user code (GuardPin) */
	struct GuardEntry *next_dead;	/* once dropped from the cache: the next dropped */
} GuardEntry;

/* One row update, as the rules see it. */
typedef struct GuardRow
{
	int			from;			/* machine state of the old row, or -1 */
	bool		from_null;		/* old state is NULL */
	char	   *from_label;		/* old state when not a machine state */
	int			to;				/* the same for the new row */
	bool		to_null;
	char	   *to_label;
	bool		state_set;		/* the statement set the state (the new one is its own) */
	bool		version_set;	/* the statement sets the version column */
	int64		old_version;	/* the row's version (NULL counts as 0) */
	int64		expected;		/* the version the statement set */
} GuardRow;

/* What the rules say about an update, in the order they are checked. */
typedef enum GuardVerdict
{
	GUARD_PASS,					/* allowed */
	GUARD_NO_STATE,				/* the new state is NULL */
	GUARD_STALE,				/* the statement's version is not the row's */
	GUARD_VERSION_UNSET,		/* strict_version and the version is not set */
	GUARD_TERMINAL,				/* the row is in a terminal state */
	GUARD_ILLEGAL				/* not an edge of the machine */
} GuardVerdict;

extern GuardEntry *GuardGet(Trigger *tg, Relation rel);
extern GuardEntry *GuardGetByOid(Oid relid, Oid tgoid);
extern void GuardPin(GuardEntry *g);
extern void GuardUnpin(GuardEntry *g);
extern Trigger *GuardFindTrigger(Relation rel);
extern int	GuardStateByName(GuardEntry *g, const char *s);
extern char *GuardStateNames(GuardMachine *m);
extern char *GuardClipName(const char *name);
extern uint64 GuardGeneration(void);
extern bool GuardFires(const GuardEntry *g);
extern int	GuardState(GuardEntry *g, Datum d, bool isnull, char **label);
extern bool GuardSameValue(Datum a, Datum b, int16 typlen, bool typbyval);
extern bool GuardIsRepeat(const GuardRow *r);
extern GuardVerdict GuardJudge(const GuardEntry *g, const GuardRow *r);
pg_noreturn extern void GuardRefuse(GuardEntry *g, const GuardRow *r, GuardVerdict v);
extern int64 GuardNextVersion(const GuardEntry *g, int64 version);
extern bool GuardSameState(int a, const char *a_label, int b, const char *b_label);

/* guard_move.c */
extern void GuardMoveNote(TriggerData *td);
extern void GuardMoveClear(void);
extern bool GuardMoveTake(TriggerData *td);

/* guard_update.c */
extern bool idem_guard_rewrite;
extern void GuardUpdateHooksInit(void);
extern Oid	GuardTriggerFunction(void);

#endif							/* IDEM_GUARD_H */

-- t/catalog.sql: a description of the idempotency extension as installed in
-- the current database, one fact a line, for t/014_upgrade.pl to compare
-- between an updated install and a fresh one.
--
--   psql -X -q -v ON_ERROR_STOP=1 -d DB -f t/catalog.sql
--
-- Each line reads "section object attribute: value".  Everything is named,
-- never numbered by OID; owners are "extension owner" or not; ACLs name
-- roles, with the object's owner as OWNER and the default ACL (NULL)
-- written out, so that a GRANT of what was already granted compares equal.
-- State is left out on purpose: sequence positions, table contents,
-- relation sizes and statistics.  The lines are sorted by section, object
-- and attribute, so a reordering that matters (table columns, enum labels,
-- function arguments) shows as a changed line, and a unified diff of two
-- outputs reads as a list of what differs.
--
-- It creates temporary tables and functions only (schema pg_temp), which
-- belong to no extension and go with the session.
--
-- What it does not see: the roles the script creates (they belong to the
-- cluster, shared by every database), rows the script inserts (the lock
-- secret), objects outside the schema that are not members, default
-- privileges, security labels, extended statistics and publications of
-- member tables.  None is used today; add a section when one is.

\set ON_ERROR_STOP 1
\pset format unaligned
\pset tuples_only on
\pset pager off
SET client_min_messages = warning;
-- Every name outside pg_catalog is printed schema-qualified.
SET search_path = pg_catalog;

CREATE TEMP TABLE ext AS
SELECT e.oid, e.extowner, e.extnamespace FROM pg_extension e WHERE e.extname = 'idempotency';
DO $$ BEGIN
	IF (SELECT count(*) FROM pg_temp.ext) <> 1 THEN
		RAISE EXCEPTION 'extension "idempotency" is not installed in database "%"', current_database();
	END IF;
END $$;

-- The extension's member objects: what CREATE EXTENSION or ALTER EXTENSION
-- UPDATE recorded as belonging to it.
CREATE TEMP TABLE members AS
SELECT d.classid, d.objid FROM pg_depend d, pg_temp.ext
WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e';

-- (section, object, sort key, attribute, value): printed without the sort
-- key, one line per line of value.
CREATE TEMP TABLE facts (sec text, obj text, k text DEFAULT '', attr text, val text);

-- An owner as compared: the extension's owner or another role.
CREATE FUNCTION pg_temp.owner_of(o oid) RETURNS text LANGUAGE sql STABLE AS $$
	SELECT CASE WHEN o = (SELECT extowner FROM pg_temp.ext) THEN 'extension owner'
		ELSE 'not the extension owner: ' || pg_catalog.pg_get_userbyid(o) END
$$;

-- An ACL as compared: "grantee=privileges/grantor" items sorted, the owner
-- as OWNER, 0 as PUBLIC, NULL as the default it stands for.  objtype is
-- acldefault's letter, or NULL where a NULL ACL means no grants (columns).
CREATE FUNCTION pg_temp.acl(a aclitem[], owner oid, objtype "char") RETURNS text LANGUAGE sql STABLE AS $$
	SELECT coalesce(pg_catalog.string_agg(item, ' ' ORDER BY item COLLATE "C"), '(none)')
	FROM (SELECT pg_catalog.format('%s=%s/%s',
				CASE x.grantee WHEN 0 THEN 'PUBLIC' WHEN owner THEN 'OWNER' ELSE pg_catalog.pg_get_userbyid(x.grantee) END,
				pg_catalog.string_agg(x.privilege_type || CASE WHEN x.is_grantable THEN '*' ELSE '' END, ','
					ORDER BY x.privilege_type COLLATE "C"),
				CASE x.grantor WHEN owner THEN 'OWNER' ELSE pg_catalog.pg_get_userbyid(x.grantor) END) AS item
		FROM pg_catalog.aclexplode(CASE WHEN a IS NULL AND objtype IS NOT NULL
				THEN pg_catalog.acldefault(objtype, owner) ELSE a END) x
		GROUP BY x.grantee, x.grantor) s
$$;

CREATE FUNCTION pg_temp.comment_on(cls regclass, o oid, sub int DEFAULT 0) RETURNS text LANGUAGE sql STABLE AS $$
	SELECT coalesce((SELECT d.description FROM pg_catalog.pg_description d
		WHERE d.classoid = cls AND d.objoid = o AND d.objsubid = sub), '(none)')
$$;

-- ---------------------------------------------------------------- extension
INSERT INTO facts (sec, obj, attr, val)
SELECT 'extension', e.extname, a, v
FROM pg_extension e JOIN pg_temp.ext USING (oid),
LATERAL (VALUES
	('version', e.extversion),
	('relocatable', e.extrelocatable::text),
	('schema', e.extnamespace::regnamespace::text),
	('owner', pg_temp.owner_of(e.extowner)),
	('comment', pg_temp.comment_on('pg_extension', e.oid)),
	('requires', (SELECT coalesce(string_agg(r.extname, ', ' ORDER BY r.extname COLLATE "C"), '(none)')
		FROM pg_depend d JOIN pg_extension r ON r.oid = d.refobjid
		WHERE d.classid = 'pg_extension'::regclass AND d.objid = e.oid
		AND d.refclassid = 'pg_extension'::regclass))) AS x(a, v);

-- Tables and sequences that pg_dump dumps (pg_extension_config_dump), with
-- their conditions, by name: the order they were registered in is no matter.
INSERT INTO facts (sec, obj, attr, val)
SELECT 'extension', 'idempotency', 'config dump ' || c.rel::regclass::text, coalesce(nullif(c.cond, ''), '(all rows)')
FROM pg_extension e JOIN pg_temp.ext USING (oid),
	unnest(e.extconfig, e.extcondition) AS c(rel, cond);

-- ---------------------------------------------------------------- schema
INSERT INTO facts (sec, obj, attr, val)
SELECT 'schema', n.nspname, a, v
FROM pg_namespace n JOIN pg_temp.ext ON n.oid = ext.extnamespace,
LATERAL (VALUES
	('owner', pg_temp.owner_of(n.nspowner)),
	('acl', pg_temp.acl(n.nspacl, n.nspowner, 'n')),
	('comment', pg_temp.comment_on('pg_namespace', n.oid))) AS x(a, v);

-- Anything in the extension's schema that is not a member (or part of one:
-- a column default, an index, an array type, a constraint) was left behind
-- or created outside the extension.
INSERT INTO facts (sec, obj, attr, val)
SELECT 'schema', 'idempotency', 'holds a non-member', o.type || ' ' || o.identity
FROM pg_depend d JOIN pg_temp.ext ON d.refobjid = ext.extnamespace,
	LATERAL pg_identify_object(d.classid, d.objid, d.objsubid) o
WHERE d.refclassid = 'pg_namespace'::regclass AND d.classid <> 'pg_extension'::regclass
AND NOT EXISTS (SELECT FROM pg_temp.members m WHERE m.classid = d.classid AND m.objid = d.objid)
-- Array types, and the row types of tables and views, depend on their
-- schema but are made with what they belong to.
AND NOT (d.classid = 'pg_type'::regclass AND EXISTS (SELECT FROM pg_depend i
	WHERE i.classid = d.classid AND i.objid = d.objid AND i.deptype = 'i'));

-- ---------------------------------------------------------------- members
-- Every member by kind and identity, whatever its kind, with its comment
-- and the initial privileges recorded for it (pg_init_privs, which
-- pg_dump uses to tell the extension's grants from a DBA's).
INSERT INTO facts (sec, obj, attr, val)
SELECT 'member', o.type || ' ' || o.identity, a, v
FROM pg_temp.members m, LATERAL pg_identify_object(m.classid, m.objid, 0) o,
LATERAL (VALUES
	('comment', pg_temp.comment_on(m.classid, m.objid)),
	('initial privileges', (SELECT pg_temp.acl(ip.initprivs, (SELECT extowner FROM pg_temp.ext), NULL)
		|| ' (' || ip.privtype::text || ')' FROM pg_init_privs ip
		WHERE ip.classoid = m.classid AND ip.objoid = m.objid AND ip.objsubid = 0))) AS x(a, v)
WHERE v IS NOT NULL;

-- Initial privileges of columns and of the schema.
INSERT INTO facts (sec, obj, attr, val)
SELECT CASE WHEN ip.objsubid = 0 THEN 'schema' ELSE 'member' END,
	CASE WHEN ip.objsubid = 0 THEN o.identity ELSE o.type || ' ' || o.identity END, 'initial privileges',
	pg_temp.acl(ip.initprivs, (SELECT extowner FROM pg_temp.ext), NULL) || ' (' || ip.privtype::text || ')'
FROM pg_init_privs ip, LATERAL pg_identify_object(ip.classoid, ip.objoid, ip.objsubid) o
WHERE (ip.objsubid <> 0 AND EXISTS (SELECT FROM pg_temp.members m
		WHERE m.classid = ip.classoid AND m.objid = ip.objoid))
	OR (ip.classoid = 'pg_namespace'::regclass AND ip.objoid = (SELECT extnamespace FROM pg_temp.ext));

-- ---------------------------------------------------------------- functions
-- Functions, procedures and aggregates.  C functions by symbol and
-- library; the others by body, one line of it per line of output.
INSERT INTO facts (sec, obj, k, attr, val)
SELECT 'function', p.oid::regprocedure::text, k, a, v
FROM pg_proc p JOIN pg_temp.members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
	JOIN pg_language l ON l.oid = p.prolang,
LATERAL (VALUES
	('1', 'kind', CASE p.prokind WHEN 'f' THEN 'function' WHEN 'p' THEN 'procedure'
		WHEN 'a' THEN 'aggregate' WHEN 'w' THEN 'window' END),
	('1', 'arguments', pg_get_function_arguments(p.oid)),
	('1', 'result', coalesce(pg_get_function_result(p.oid), '(none)')),
	('1', 'language', l.lanname),
	('1', 'volatility', CASE p.provolatile WHEN 'i' THEN 'immutable' WHEN 's' THEN 'stable' ELSE 'volatile' END),
	('1', 'parallel', CASE p.proparallel WHEN 's' THEN 'safe' WHEN 'r' THEN 'restricted' ELSE 'unsafe' END),
	('1', 'strict', p.proisstrict::text),
	('1', 'security definer', p.prosecdef::text),
	('1', 'leakproof', p.proleakproof::text),
	('1', 'cost', p.procost::text),
	('1', 'rows', p.prorows::text),
	('1', 'support', p.prosupport::regproc::text),
	('1', 'config', coalesce(array_to_string(p.proconfig, ', '), '(none)')),
	('1', 'owner', pg_temp.owner_of(p.proowner)),
	('1', 'acl', pg_temp.acl(p.proacl, p.proowner, 'f')),
	('2', CASE WHEN l.lanname = 'c' THEN 'symbol' WHEN l.lanname = 'internal' THEN 'internal function'
		ELSE 'body' END,
		CASE WHEN p.prosqlbody IS NOT NULL THEN pg_get_function_sqlbody(p.oid) ELSE p.prosrc END),
	('2', 'library', p.probin)) AS x(k, a, v)
WHERE v IS NOT NULL AND NOT (p.prokind = 'a' AND a IN ('symbol', 'internal function', 'body'));

INSERT INTO facts (sec, obj, k, attr, val)
SELECT 'function', g.aggfnoid::regprocedure::text, '3', 'aggregate ' || a, v
FROM pg_aggregate g JOIN pg_temp.members m ON m.classid = 'pg_proc'::regclass AND m.objid = g.aggfnoid,
LATERAL (VALUES
	('kind', g.aggkind::text),
	('direct arguments', g.aggnumdirectargs::text),
	('transition function', g.aggtransfn::regproc::text),
	('final function', g.aggfinalfn::regproc::text),
	('final extra', g.aggfinalextra::text),
	('final modify', g.aggfinalmodify::text),
	('combine function', g.aggcombinefn::regproc::text),
	('serial function', g.aggserialfn::regproc::text),
	('deserial function', g.aggdeserialfn::regproc::text),
	('moving transition function', g.aggmtransfn::regproc::text),
	('moving inverse function', g.aggminvtransfn::regproc::text),
	('moving final function', g.aggmfinalfn::regproc::text),
	('sort operator', g.aggsortop::regoperator::text),
	('state type', format_type(g.aggtranstype, NULL)),
	('state space', g.aggtransspace::text),
	('moving state type', format_type(nullif(g.aggmtranstype, 0), NULL)),
	('initial value', g.agginitval),
	('moving initial value', g.aggminitval)) AS x(a, v)
WHERE v IS NOT NULL;

-- ---------------------------------------------------------------- relations
-- Tables, views, sequences (and anything else in pg_class), with their
-- columns, constraints, indexes, triggers, rules and row-level security.
CREATE TEMP TABLE rels AS
SELECT c.* FROM pg_class c JOIN pg_temp.members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid;

INSERT INTO facts (sec, obj, attr, val)
SELECT 'relation', c.oid::regclass::text, a, v
FROM pg_temp.rels c,
LATERAL (VALUES
	('kind', CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table' WHEN 'v' THEN 'view'
		WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign table'
		ELSE c.relkind::text END),
	('persistence', c.relpersistence::text),
	('options', coalesce(array_to_string(c.reloptions, ', '), '(none)')),
	('access method', (SELECT amname FROM pg_am WHERE oid = c.relam)),
	('row security', c.relrowsecurity::text || CASE WHEN c.relforcerowsecurity THEN ', forced' ELSE '' END),
	('replica identity', c.relreplident::text),
	('partition key', CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END),
	('partition of', CASE WHEN c.relispartition THEN (SELECT i.inhparent::regclass::text || ' '
		|| pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i WHERE i.inhrelid = c.oid) END),
	('inherits', (SELECT string_agg(i.inhparent::regclass::text, ', ' ORDER BY i.inhseqno)
		FROM pg_inherits i WHERE i.inhrelid = c.oid AND NOT c.relispartition)),
	('owner', pg_temp.owner_of(c.relowner)),
	('acl', pg_temp.acl(c.relacl, c.relowner, CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char")),
	('comment', pg_temp.comment_on('pg_class', c.oid)),
	('view definition', CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid, true) END)) AS x(a, v)
WHERE v IS NOT NULL;

-- Columns, numbered among the live ones (a dropped column leaves a gap in
-- attnum, not in what a query sees).
INSERT INTO facts (sec, obj, k, attr, val)
SELECT 'relation', c.oid::regclass::text, 'column ' || lpad(col.pos::text, 4, '0') || a,
	'column ' || col.pos || ' ' || quote_ident(col.attname) || ' ' || a, v
FROM pg_temp.rels c,
LATERAL (SELECT t.*, row_number() OVER (ORDER BY t.attnum) AS pos
	FROM pg_attribute t WHERE t.attrelid = c.oid AND t.attnum > 0 AND NOT t.attisdropped) col,
LATERAL (VALUES
	('type', format_type(col.atttypid, col.atttypmod)),
	('not null', col.attnotnull::text),
	('default', (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
		WHERE d.adrelid = c.oid AND d.adnum = col.attnum)),
	('collation', (SELECT CASE WHEN col.attcollation = t.typcollation THEN NULL
		ELSE col.attcollation::regcollation::text END FROM pg_type t WHERE t.oid = col.atttypid)),
	('identity', nullif(col.attidentity, '')::text),
	('generated', nullif(col.attgenerated, '')::text),
	('storage', col.attstorage::text),
	('compression', nullif(col.attcompression, '')::text),
	('statistics target', nullif(col.attstattarget, -1)::text),
	-- PostgreSQL 15.20 as Debian packages it keeps an option of its own
	-- on every column, pg_attver, whose value differs in every database.
	('options', (SELECT string_agg(o, ', ' ORDER BY o COLLATE "C") FROM unnest(col.attoptions) o
		WHERE o NOT LIKE 'pg\_attver=%')),
	('acl', CASE WHEN col.attacl IS NOT NULL THEN pg_temp.acl(col.attacl, c.relowner, NULL) END),
	('comment', (SELECT description FROM pg_description
		WHERE classoid = 'pg_class'::regclass AND objoid = c.oid AND objsubid = col.attnum))) AS x(a, v)
WHERE v IS NOT NULL AND c.relkind <> 'S';

INSERT INTO facts (sec, obj, k, attr, val)
SELECT 'relation', c.oid::regclass::text, 'constraint', 'constraint ' || quote_ident(con.conname) || ' ' || a, v
FROM pg_temp.rels c JOIN pg_constraint con ON con.conrelid = c.oid,
LATERAL (VALUES
	('definition', pg_get_constraintdef(con.oid)),
	('deferrable', CASE WHEN con.condeferrable THEN 'deferrable'
		|| CASE WHEN con.condeferred THEN ' initially deferred' ELSE '' END END),
	('validated', CASE WHEN NOT con.convalidated THEN 'not valid' END),
	('no inherit', CASE WHEN con.connoinherit THEN 'no inherit' END),
	('index', CASE WHEN con.conindid <> 0 THEN con.conindid::regclass::text END),
	('comment', (SELECT description FROM pg_description
		WHERE classoid = 'pg_constraint'::regclass AND objoid = con.oid AND objsubid = 0))) AS x(a, v)
WHERE v IS NOT NULL;

INSERT INTO facts (sec, obj, k, attr, val)
SELECT 'relation', c.oid::regclass::text, 'index', 'index ' || i.indexrelid::regclass::text || ' ' || a, v
FROM pg_temp.rels c JOIN pg_index i ON i.indrelid = c.oid JOIN pg_class ic ON ic.oid = i.indexrelid,
LATERAL (VALUES
	('definition', pg_get_indexdef(i.indexrelid)),
	('options', array_to_string(ic.reloptions, ', ')),
	('clustered', CASE WHEN i.indisclustered THEN 'clustered' END),
	('replica identity', CASE WHEN i.indisreplident THEN 'replica identity' END),
	('valid', CASE WHEN NOT i.indisvalid THEN 'invalid' END),
	('comment', obj_description(i.indexrelid, 'pg_class'))) AS x(a, v)
WHERE v IS NOT NULL;

INSERT INTO facts (sec, obj, k, attr, val)
SELECT 'relation', c.oid::regclass::text, 'trigger', 'trigger ' || quote_ident(tg.tgname) || ' ' || a, v
FROM pg_temp.rels c JOIN pg_trigger tg ON tg.tgrelid = c.oid AND NOT tg.tgisinternal,
LATERAL (VALUES
	('definition', pg_get_triggerdef(tg.oid)),
	('enabled', tg.tgenabled::text),
	('comment', obj_description(tg.oid, 'pg_trigger'))) AS x(a, v)
WHERE v IS NOT NULL;

INSERT INTO facts (sec, obj, k, attr, val)
SELECT 'relation', c.oid::regclass::text, 'rule', 'rule ' || quote_ident(r.rulename) || ' ' || a, v
FROM pg_temp.rels c JOIN pg_rewrite r ON r.ev_class = c.oid AND r.rulename <> '_RETURN',
LATERAL (VALUES
	('definition', pg_get_ruledef(r.oid, true)),
	('enabled', r.ev_enabled::text),
	('comment', obj_description(r.oid, 'pg_rewrite'))) AS x(a, v)
WHERE v IS NOT NULL;

INSERT INTO facts (sec, obj, k, attr, val)
SELECT 'relation', c.oid::regclass::text, 'policy', 'policy ' || quote_ident(pol.polname) || ' ' || a, v
FROM pg_temp.rels c JOIN pg_policy pol ON pol.polrelid = c.oid,
LATERAL (VALUES
	('command', pol.polcmd::text),
	('permissive', pol.polpermissive::text),
	('roles', (SELECT string_agg(n, ', ' ORDER BY n COLLATE "C")
		FROM unnest(pol.polroles) r, LATERAL (SELECT CASE r WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(r) END) AS x(n))),
	('using', pg_get_expr(pol.polqual, pol.polrelid)),
	('with check', pg_get_expr(pol.polwithcheck, pol.polrelid)),
	('comment', obj_description(pol.oid, 'pg_policy'))) AS x(a, v)
WHERE v IS NOT NULL;

INSERT INTO facts (sec, obj, k, attr, val)
SELECT 'relation', c.oid::regclass::text, 'sequence', 'sequence ' || a, v
FROM pg_temp.rels c JOIN pg_sequence s ON s.seqrelid = c.oid,
LATERAL (VALUES
	('type', format_type(s.seqtypid, NULL)),
	('start', s.seqstart::text),
	('increment', s.seqincrement::text),
	('min', s.seqmin::text),
	('max', s.seqmax::text),
	('cache', s.seqcache::text),
	('cycle', s.seqcycle::text),
	('owned by', (SELECT d.refobjid::regclass::text || '.' || quote_ident(a.attname)
		FROM pg_depend d JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
		WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
		AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))) AS x(a, v)
WHERE v IS NOT NULL;

-- ---------------------------------------------------------------- types
INSERT INTO facts (sec, obj, attr, val)
SELECT 'type', format_type(t.oid, NULL), a, v
FROM pg_type t JOIN pg_temp.members m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid,
LATERAL (VALUES
	('kind', CASE t.typtype WHEN 'b' THEN 'base' WHEN 'c' THEN 'composite' WHEN 'd' THEN 'domain'
		WHEN 'e' THEN 'enum' WHEN 'p' THEN 'pseudo' WHEN 'r' THEN 'range' WHEN 'm' THEN 'multirange' END),
	('length', t.typlen::text),
	('by value', t.typbyval::text),
	('alignment', t.typalign::text),
	('storage', t.typstorage::text),
	('category', t.typcategory::text),
	('preferred', t.typispreferred::text),
	('delimiter', t.typdelim::text),
	('input', t.typinput::regproc::text),
	('output', t.typoutput::regproc::text),
	('receive', t.typreceive::regproc::text),
	('send', t.typsend::regproc::text),
	('typmod input', t.typmodin::regproc::text),
	('typmod output', t.typmodout::regproc::text),
	('analyze', t.typanalyze::regproc::text),
	('subscript', t.typsubscript::regproc::text),
	('element', format_type(nullif(t.typelem, 0), NULL)),
	('array type', format_type(nullif(t.typarray, 0), NULL)),
	('collation', t.typcollation::regcollation::text),
	('base type', format_type(nullif(t.typbasetype, 0), nullif(t.typtypmod, -1))),
	('not null', CASE WHEN t.typtype = 'd' THEN t.typnotnull::text END),
	('default', coalesce(pg_get_expr(t.typdefaultbin, 0), t.typdefault)),
	('enum labels', (SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
		FROM pg_enum e WHERE e.enumtypid = t.oid)),
	('owner', pg_temp.owner_of(t.typowner)),
	('acl', pg_temp.acl(t.typacl, t.typowner, 'T'))) AS x(a, v)
WHERE v IS NOT NULL;

-- Attributes of composite types, constraints of domains, ranges.
INSERT INTO facts (sec, obj, k, attr, val)
SELECT 'type', format_type(t.oid, NULL), 'attribute ' || lpad(col.pos::text, 4, '0'),
	'attribute ' || col.pos || ' ' || quote_ident(col.attname),
	format_type(col.atttypid, col.atttypmod)
	|| CASE WHEN col.attcollation <> ty.typcollation THEN ' collate ' || col.attcollation::regcollation::text ELSE '' END
	|| coalesce(' -- ' || (SELECT description FROM pg_description
		WHERE classoid = 'pg_class'::regclass AND objoid = t.typrelid AND objsubid = col.attnum), '')
FROM pg_type t JOIN pg_temp.members m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid,
LATERAL (SELECT a.*, row_number() OVER (ORDER BY a.attnum) AS pos
	FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) col
	JOIN pg_type ty ON ty.oid = col.atttypid
WHERE t.typtype = 'c';

INSERT INTO facts (sec, obj, k, attr, val)
SELECT 'type', format_type(t.oid, NULL), 'constraint', 'constraint ' || quote_ident(con.conname),
	pg_get_constraintdef(con.oid)
	|| coalesce(' -- ' || obj_description(con.oid, 'pg_constraint'), '')
FROM pg_type t JOIN pg_temp.members m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid
	JOIN pg_constraint con ON con.contypid = t.oid;

INSERT INTO facts (sec, obj, k, attr, val)
SELECT 'type', format_type(t.oid, NULL), 'range', 'range ' || a, v
FROM pg_type t JOIN pg_temp.members m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid
	JOIN pg_range r ON r.rngtypid = t.oid,
LATERAL (VALUES
	('subtype', format_type(r.rngsubtype, NULL)),
	('multirange', format_type(r.rngmultitypid, NULL)),
	('collation', r.rngcollation::regcollation::text),
	('operator class', (SELECT opcname FROM pg_opclass WHERE oid = r.rngsubopc)),
	('canonical', r.rngcanonical::regproc::text),
	('subtype diff', r.rngsubdiff::regproc::text)) AS x(a, v)
WHERE v IS NOT NULL;

-- ---------------------------------------------------------------- operators
INSERT INTO facts (sec, obj, attr, val)
SELECT 'operator', o.oid::regoperator::text, a, v
FROM pg_operator o JOIN pg_temp.members m ON m.classid = 'pg_operator'::regclass AND m.objid = o.oid,
LATERAL (VALUES
	('result', format_type(o.oprresult, NULL)),
	('function', o.oprcode::regprocedure::text),
	('commutator', nullif(o.oprcom, 0)::regoperator::text),
	('negator', nullif(o.oprnegate, 0)::regoperator::text),
	('restrict', o.oprrest::regproc::text),
	('join', o.oprjoin::regproc::text),
	('merges', o.oprcanmerge::text),
	('hashes', o.oprcanhash::text),
	('owner', pg_temp.owner_of(o.oprowner))) AS x(a, v)
WHERE v IS NOT NULL;

-- ------------------------------------------- operator classes and families
INSERT INTO facts (sec, obj, attr, val)
SELECT 'operator class', (pg_identify_object(m.classid, c.oid, 0)).identity, a, v
FROM pg_opclass c JOIN pg_temp.members m ON m.classid = 'pg_opclass'::regclass AND m.objid = c.oid,
LATERAL (VALUES
	('family', (pg_identify_object('pg_opfamily'::regclass, c.opcfamily, 0)).identity),
	('input type', format_type(c.opcintype, NULL)),
	('default', c.opcdefault::text),
	('storage type', format_type(nullif(c.opckeytype, 0), NULL)),
	('owner', pg_temp.owner_of(c.opcowner))) AS x(a, v)
WHERE v IS NOT NULL;

INSERT INTO facts (sec, obj, attr, val)
SELECT 'operator family', (pg_identify_object(m.classid, f.oid, 0)).identity, 'owner', pg_temp.owner_of(f.opfowner)
FROM pg_opfamily f JOIN pg_temp.members m ON m.classid = 'pg_opfamily'::regclass AND m.objid = f.oid;

-- The members of each family, and what each is bound to: a member made by
-- CREATE OPERATOR CLASS belongs to the class (deptype i), one added by
-- ALTER OPERATOR FAMILY to the family alone (deptype a), which decides
-- what dropping the class takes with it.
INSERT INTO facts (sec, obj, k, attr, val)
SELECT 'operator family', (pg_identify_object('pg_opfamily'::regclass, f.oid, 0)).identity,
	'operator ' || lpad(ao.amopstrategy::text, 4, '0'),
	format('operator %s (%s, %s)', ao.amopstrategy, format_type(ao.amoplefttype, NULL), format_type(ao.amoprighttype, NULL)),
	ao.amopopr::regoperator::text
	|| CASE ao.amoppurpose WHEN 'o' THEN ' for order by ' || (pg_identify_object('pg_opfamily'::regclass, ao.amopsortfamily, 0)).identity ELSE '' END
	|| ', ' || (SELECT string_agg(b, ', ' ORDER BY b COLLATE "C") FROM pg_depend d,
		LATERAL (SELECT CASE WHEN d.refclassid = 'pg_opclass'::regclass
				THEN 'of class ' || o.identity || ' (' || d.deptype::text || ')'
				ELSE 'added to the family (' || d.deptype::text || ')' END
			FROM pg_identify_object(d.refclassid, d.refobjid, 0) o) AS x(b)
		WHERE d.classid = 'pg_amop'::regclass AND d.objid = ao.oid
		AND d.refclassid IN ('pg_opclass'::regclass, 'pg_opfamily'::regclass))
FROM pg_opfamily f JOIN pg_temp.members m ON m.classid = 'pg_opfamily'::regclass AND m.objid = f.oid
	JOIN pg_amop ao ON ao.amopfamily = f.oid;

INSERT INTO facts (sec, obj, k, attr, val)
SELECT 'operator family', (pg_identify_object('pg_opfamily'::regclass, f.oid, 0)).identity,
	'support ' || lpad(ap.amprocnum::text, 4, '0'),
	format('support %s (%s, %s)', ap.amprocnum, format_type(ap.amproclefttype, NULL), format_type(ap.amprocrighttype, NULL)),
	ap.amproc::regprocedure::text
	|| ', ' || (SELECT string_agg(b, ', ' ORDER BY b COLLATE "C") FROM pg_depend d,
		LATERAL (SELECT CASE WHEN d.refclassid = 'pg_opclass'::regclass
				THEN 'of class ' || o.identity || ' (' || d.deptype::text || ')'
				ELSE 'added to the family (' || d.deptype::text || ')' END
			FROM pg_identify_object(d.refclassid, d.refobjid, 0) o) AS x(b)
		WHERE d.classid = 'pg_amproc'::regclass AND d.objid = ap.oid
		AND d.refclassid IN ('pg_opclass'::regclass, 'pg_opfamily'::regclass))
FROM pg_opfamily f JOIN pg_temp.members m ON m.classid = 'pg_opfamily'::regclass AND m.objid = f.oid
	JOIN pg_amproc ap ON ap.amprocfamily = f.oid;

-- ---------------------------------------------------------------- casts
INSERT INTO facts (sec, obj, attr, val)
SELECT 'cast', format('(%s AS %s)', format_type(c.castsource, NULL), format_type(c.casttarget, NULL)), a, v
FROM pg_cast c JOIN pg_temp.members m ON m.classid = 'pg_cast'::regclass AND m.objid = c.oid,
LATERAL (VALUES
	('function', nullif(c.castfunc, 0)::regprocedure::text),
	('context', CASE c.castcontext WHEN 'e' THEN 'explicit' WHEN 'a' THEN 'assignment' WHEN 'i' THEN 'implicit' END),
	('method', CASE c.castmethod WHEN 'f' THEN 'function' WHEN 'i' THEN 'inout' WHEN 'b' THEN 'binary' END)) AS x(a, v)
WHERE v IS NOT NULL;

-- ---------------------------------------------------------------- event triggers
INSERT INTO facts (sec, obj, attr, val)
SELECT 'event trigger', quote_ident(e.evtname), a, v
FROM pg_event_trigger e JOIN pg_temp.members m ON m.classid = 'pg_event_trigger'::regclass AND m.objid = e.oid,
LATERAL (VALUES
	('event', e.evtevent::text),
	('function', e.evtfoid::regprocedure::text),
	('enabled', e.evtenabled::text),
	('tags', array_to_string(e.evttags, ', ')),
	('owner', pg_temp.owner_of(e.evtowner))) AS x(a, v)
WHERE v IS NOT NULL;

-- ---------------------------------------------------------------- output
-- A value of several lines prints as several lines with the same prefix,
-- so that a changed line of a function body is one line of a diff.
SELECT format('%s %s %s: %s', f.sec, f.obj, f.attr, l.line)
FROM pg_temp.facts f,
	LATERAL regexp_split_to_table(f.val, E'\n') WITH ORDINALITY AS l(line, n)
ORDER BY f.sec COLLATE "C", f.obj COLLATE "C", f.k COLLATE "C", f.attr COLLATE "C", l.n;

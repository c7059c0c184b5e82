# CREATE EXTENSION runs as a superuser.  A database owner who creates the
# schema "idempotency" first and plants functions and operators in it,
# under every name the install script calls and more, must not get them
# run: the script refuses a schema that another role owns, that lets
# another role create objects in it, or that is not empty, before it runs
# anything else.  Behind that wall, the rest of the script qualifies every
# function and operator it calls: run by hand with the check taken out, in
# a schema full of planted objects, it calls none of them.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('install_safety');
$node->init;
$node->start;

# The install script of the version CREATE EXTENSION installs.
my ($version) = slurp_file(
	$node->config_data('--sharedir') . '/extension/idempotency.control')
  =~ /^default_version = '([^']+)'/m;
my $script = slurp_file(
	$node->config_data('--sharedir') . "/extension/idempotency--$version.sql");

# Every name the script calls a function by, with a few argument lists
# each, and every operator it could use, all in schema idempotency; each
# records that it ran and tries to make the database owner a superuser.
my %names;
$names{ lc $1 } = 1 while $script =~ /\b([A-Za-z_][A-Za-z0-9_]*)\s*\(/g;
delete $names{$_} for grep { /^(idem_|snowflake|min$|max$)/ } keys %names;	# its own
$names{$_} = 1 for qw(format aclexplode pg_get_userbyid octet_length now
  extract date_trunc eqsel neqsel scalarltsel scalarlesel scalargtsel
  scalargesel eqjoinsel pg_extension_config_dump);
my @args = ('', 'text', 'text, text', 'text, text, text', 'bytea', 'interval',
	'oid', 'name', 'text, interval', 'text, anyelement', 'regclass, text');
my $body = q{LANGUAGE plpgsql AS $p$
BEGIN
	INSERT INTO public.planted_log VALUES (CURRENT_USER);
	ALTER ROLE regress_dbowner SUPERUSER;
	RETURN NULL;
END $p$;};
my $plant = '';
for my $name (sort grep { $_ ne 'format' } keys %names)
{
	$plant .= qq{CREATE FUNCTION idempotency."$name"($_) RETURNS text $body\n}
	  for @args;
}
# format() is planted to do its job as well, so that a script that called
# it would run through, with the owner made a superuser.
for my $n (1 .. 10)
{
	my $params = join ', ', ('text') x $n;
	my $pass = join ', ', map { "\$$_" } 1 .. $n;
	(my $fwd = $body) =~ s/RETURN NULL/RETURN pg_catalog.format($pass)/;
	$plant .= qq{CREATE FUNCTION idempotency.format($params) RETURNS text $fwd\n};
}
my $n = 0;
for my $type ('text', 'name', 'oid', 'integer', 'bigint', 'bytea', 'interval',
	'timestamptz', 'anyelement')
{
	for my $op ('=', '<>', '<', '<=', '>', '>=', '-', '+', '||')
	{
		$n++;
		$plant .= qq{CREATE FUNCTION idempotency.op_$n($type, $type) RETURNS boolean $body
CREATE OPERATOR idempotency.$op (LEFTARG = $type, RIGHTARG = $type,
	FUNCTION = idempotency.op_$n);\n};
	}
}

$node->safe_psql('postgres', q{
	CREATE ROLE regress_dbowner LOGIN;
	CREATE DATABASE victim OWNER regress_dbowner;
});
my $planted_db = sub {
	my ($db) = @_;
	$node->safe_psql($db, qq{
		CREATE TABLE public.planted_log (who text);
		GRANT INSERT ON public.planted_log TO PUBLIC;
		CREATE SCHEMA idempotency;
		$plant
	}, extra_params => [ '-U', 'regress_dbowner' ]);
};
$planted_db->('victim');
my $planted = $node->safe_psql('victim', q{
	SELECT count(*) FROM pg_proc WHERE pronamespace = 'idempotency'::regnamespace});
cmp_ok($planted, '>', 500, "the database owner planted $planted functions");

# The attack of the review: the superuser installs into the planted schema.
my ($ret, $out, $err) = $node->psql('victim',
	"\\set VERBOSITY verbose\nCREATE EXTENSION idempotency");
isnt($ret, 0, 'CREATE EXTENSION refuses a schema another role owns');
like($err, qr/ERROR:\s+42501: schema "idempotency" is owned by role "regress_dbowner", which is neither the installing role nor a superuser/,
	'with SQLSTATE 42501 naming the owner');
like($err, qr/HINT:\s+Drop the schema/, 'and a hint');
my $after = sub {
	my ($db) = @_;
	return $node->safe_psql($db, q{
		SELECT (SELECT count(*) FROM public.planted_log),
			(SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_dbowner'),
			(SELECT count(*) FROM pg_extension WHERE extname = 'idempotency')});
};
is($after->('victim'), '0|f|0', 'no planted function ran, the owner is no superuser, nothing installed');

# Taken over by the superuser, the schema still holds the plants.
$node->safe_psql('victim', 'ALTER SCHEMA idempotency OWNER TO CURRENT_USER');
($ret, $out, $err) = $node->psql('victim',
	"\\set VERBOSITY verbose\nCREATE EXTENSION idempotency");
like($err, qr/ERROR:\s+55000: schema "idempotency" is not empty/, 'a schema that is not empty is refused');
is($after->('victim'), '0|f|0', 'no planted function ran');

# An empty schema of the superuser's that lets another role create in it.
$node->safe_psql('postgres', q{
	CREATE SCHEMA idempotency;
	GRANT CREATE ON SCHEMA idempotency TO regress_dbowner;
});
($ret, $out, $err) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nCREATE EXTENSION idempotency");
like($err, qr/ERROR:\s+42501: schema "idempotency" lets roles other than its owner create objects in it/,
	'a schema others may create objects in is refused');
like($err, qr/HINT:\s+REVOKE CREATE ON SCHEMA idempotency/, 'with a hint');

# An empty schema of the installing role's own is used, and so is one of
# another superuser's, as a restored dump leaves it.
$node->safe_psql('postgres', 'REVOKE CREATE ON SCHEMA idempotency FROM regress_dbowner');
is($node->safe_psql('postgres', q{
	CREATE EXTENSION idempotency;
	SELECT extversion FROM pg_extension WHERE extname = 'idempotency'}),
	$version, 'an empty schema the installing role owns is used');
$node->safe_psql('postgres', q{
	DROP EXTENSION idempotency;
	CREATE ROLE regress_other_super SUPERUSER;
	ALTER SCHEMA idempotency OWNER TO regress_other_super;
	GRANT CREATE ON SCHEMA idempotency TO regress_other_super;
});
is($node->safe_psql('postgres', q{
	CREATE EXTENSION idempotency;
	SELECT extversion FROM pg_extension WHERE extname = 'idempotency'}),
	$version, 'an empty schema another superuser owns is used');
$node->safe_psql('postgres', 'DROP EXTENSION idempotency; DROP SCHEMA idempotency');

# The second wall.  Run the script by hand, as CREATE EXTENSION would
# (search_path = idempotency, pg_temp), without the schema check, in a
# schema full of planted functions and operators: it must call none.
$node->safe_psql('postgres', 'CREATE DATABASE planted OWNER regress_dbowner');
$planted_db->('planted');
my $libdir = '$libdir/idempotency';
my $by_hand = $script;
$by_hand =~ s/^\\echo.*$//m;
$by_hand =~ s/^DO \$schema\$.*?^\$schema\$;$//ms
  or die 'the schema check is not where this test expects it';
$by_hand =~ s/MODULE_PATHNAME/$libdir/g;
$by_hand =~ s/^SELECT pg_catalog\.pg_extension_config_dump\(.*?\);$//msg;
($ret, $out, $err) = $node->psql('planted', qq{
	SET search_path = idempotency, pg_temp;
	\\set ON_ERROR_STOP on
	$by_hand
});
is($ret, 0, 'the script runs through in a schema full of plants')
  or diag($err);
is($after->('planted'), '0|f|0', 'and calls none of them');
is($node->safe_psql('planted', q{
	SELECT count(*) FILTER (WHERE NOT (code.pronamespace = 'idempotency'::regnamespace
			AND code.proname LIKE 'snowflake\_%'
			AND rest.pronamespace = 'pg_catalog'::regnamespace
			AND joinsel.pronamespace = 'pg_catalog'::regnamespace)), count(*)
	FROM pg_operator o
	JOIN pg_proc code ON code.oid = o.oprcode
	JOIN pg_proc rest ON rest.oid = o.oprrest
	JOIN pg_proc joinsel ON joinsel.oid = o.oprjoin
	WHERE 'idempotency.snowflake'::regtype IN (o.oprleft, o.oprright)}),
	'0|18', 'its 18 operators are bound to its own functions and PostgreSQL\'s estimators');

$node->stop;
done_testing();

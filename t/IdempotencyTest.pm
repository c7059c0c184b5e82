# t/IdempotencyTest.pm: what the TAP tests share.
package IdempotencyTest;

use strict;
use warnings;
use Exporter 'import';
use PostgreSQL::Test::Cluster;

our @EXPORT = qw(preloaded_node);

# A new cluster with idempotency in shared_preload_libraries, the given
# lines appended to postgresql.conf, started, and the extension created in
# the postgres database.  init_args go to PostgreSQL::Test::Cluster->init.
sub preloaded_node
{
	my ($name, $conf, %init_args) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);

	$node->init(%init_args);
	$node->append_conf('postgresql.conf',
		"shared_preload_libraries = 'idempotency'\n" . ($conf // ''));
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION idempotency');
	return $node;
}

1;

# The README's SQL, run as a newcomer pastes it: every ```sql block of
# README.md, in order, in one psql session on a fresh server that preloads
# the extension, as a superuser.  A block followed by a ```text block must
# print exactly that (trailing blanks aside); any other block must print no
# ERROR or WARNING.
#
# IDEM_README_OUT=FILE writes what each block printed, to update the README.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

# The blocks, from the source tree (TAP tests run there).
my $readme = slurp_file('README.md');
my @blocks;
my $line = 0;
my ($lang, $text, $start);
my $pending;	# the SQL block a ```text block may follow (blank lines between)
for my $l (split /\n/, $readme, -1)
{
	$line++;
	if (!defined $lang && $l =~ /^```(\w*)\s*$/)
	{
		($lang, $text, $start) = ($1, '', $line);
	}
	elsif (defined $lang && $l =~ /^```\s*$/)
	{
		if ($lang eq 'sql')
		{
			push @blocks, { line => $start, sql => $text };
			$pending = $#blocks;
		}
		else
		{
			$blocks[$pending]{expected} = $text
			  if $lang eq 'text' && defined $pending;
			undef $pending;
		}
		undef $lang;
	}
	elsif (defined $lang)
	{
		$text .= "$l\n";
	}
	elsif ($l =~ /\S/)
	{
		undef $pending;
	}
}
cmp_ok(scalar @blocks, '>=', 10, 'README.md has SQL blocks');
cmp_ok(scalar(grep { defined $_->{expected} } @blocks),
	'>=', 10, 'and output to compare with');

my $node = PostgreSQL::Test::Cluster->new('readme');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'idempotency'");
$node->start;

# One session, as pasted: a marker before each block tells the output apart.
my $script = '';
for my $i (0 .. $#blocks)
{
	$script .= "\\echo '@@ block $i'\n$blocks[$i]{sql}";
}
my $out = '';
IPC::Run::run([ 'psql', '-X', '-d', $node->connstr('postgres') ],
	'<', \$script, '>&', \$out);

my %printed;
my $current;
for my $l (split /\n/, $out)
{
	if ($l =~ /^@@ block (\d+)$/)
	{
		$current = $1;
		$printed{$current} = '';
		next;
	}
	$printed{ $current // 'before' } .= "$l\n";
}

sub tidy
{
	my $s = shift // '';
	$s =~ s/[ \t]+$//mg;
	$s =~ s/\A\n+//;
	$s =~ s/\n+\z/\n/;
	return $s;
}

my $report = '';
for my $i (0 .. $#blocks)
{
	my $b = $blocks[$i];
	my $got = tidy($printed{$i});
	$report .= "-- README.md line $b->{line}\n$got\n";
	if (defined $b->{expected})
	{
		is($got, tidy($b->{expected}), "README.md line $b->{line} prints what it shows");
	}
	else
	{
		unlike($got, qr/^(ERROR|WARNING|FATAL|psql):/m,
			"README.md line $b->{line} runs without an error");
	}
}
if ($ENV{IDEM_README_OUT})
{
	open my $fh, '>', $ENV{IDEM_README_OUT} or die "$ENV{IDEM_README_OUT}: $!";
	print $fh $report;
	close $fh;
}

$node->stop;
done_testing();

#!/usr/bin/perl
# Perl's Mail::DKIM (Debian libmail-dkim-perl) as a DKIM peer for postward's tests; driven by
# tests/dkim/peers.py, which documents the behaviour. Two commands, message on stdin:
#
#   mail_dkim.pl verify NAMESERVER_ADDRESS PORT DNS_TIMEOUT_SECONDS
#       -> {"result": "fail", "detail": "fail (body has been altered)",
#           "signatures": [{"result": ..., "detail": ..., "domain": ..., "selector": ...,
#                           "algorithm": ..., "kind": "Mail::DKIM::Signature"}, ...]}
#   mail_dkim.pl sign OPTIONS_JSON
#       OPTIONS_JSON: {"key_file", "domain", "selector", "method",
#                      "headers": null | "x-a:x-b" | {"From": "+", ...}, "timestamp": null | int}
#       -> {"signature": "DKIM-Signature: v=1; ..."}   (one unfolded line, no line ending)
#
# The message must already use CRLF line endings: Mail::DKIM splits its input on "\015\012",
# and with bare LFs it silently computes a different hash ("fail (message has been altered)")
# instead of complaining. peers.py converts before calling.
use strict;
use warnings;

use JSON::PP ();
use Mail::DKIM::DNS ();
use Mail::DKIM::Signer ();
use Mail::DKIM::Verifier ();
use Net::DNS::Resolver ();

binmode STDIN;
binmode STDOUT;

sub read_message {
    local $/;
    my $message = <STDIN>;
    return defined $message ? $message : '';
}

sub emit {
    my ($data) = @_;
    print JSON::PP->new->canonical->encode($data), "\n";
}

sub verify {
    my ( $address, $port, $timeout ) = @_;

    # Without its own resolver Mail::DKIM would read /etc/resolv.conf, which knows nothing of
    # the test zones. recurse => 1: the test bed's unbound is a recursive server.
    my $resolver = Net::DNS::Resolver->new(
        nameservers => [$address],
        port        => $port,
        recurse     => 1,
        udp_timeout => $timeout,
        tcp_timeout => $timeout,
        retry       => 1,
    );
    Mail::DKIM::DNS::resolver($resolver);
    $Mail::DKIM::DNS::TIMEOUT = $timeout;    # its own alarm around each query (default 10 s)

    my $dkim = Mail::DKIM::Verifier->new();
    $dkim->PRINT( read_message() );
    $dkim->CLOSE();

    my @signatures;
    foreach my $signature ( $dkim->signatures ) {
        push @signatures,
          {
            result    => $signature->result,
            detail    => $signature->result_detail,
            domain    => $signature->domain,
            selector  => $signature->selector,
            algorithm => $signature->algorithm,
            kind      => ref($signature),
          };
    }
    emit(
        {
            result     => $dkim->result,
            detail     => $dkim->result_detail,
            signatures => \@signatures,
        }
    );
}

sub sign {
    my ($options_json) = @_;
    my $options = JSON::PP->new->decode($options_json);
    my %params = (
        Algorithm => 'rsa-sha256',
        Method    => $options->{method},
        Domain    => $options->{domain},
        Selector  => $options->{selector},
        KeyFile   => $options->{key_file},
    );
    $params{Timestamp} = $options->{timestamp} if defined $options->{timestamp};
    my $headers = $options->{headers};

    # A string adds names to Mail::DKIM's default list (only fields present get signed);
    # a hash gives exact counts ("+" = oversign, "*" = all present, 0 = never).
    $params{Headers} = $headers if defined $headers && !ref $headers;
    my $dkim = Mail::DKIM::Signer->new(%params);
    $dkim->extended_headers($headers) if ref $headers eq 'HASH';
    $dkim->PRINT( read_message() );
    $dkim->CLOSE();
    my $signature = $dkim->signature
      or die "Mail::DKIM produced no signature\n";
    emit( { signature => $signature->as_string } );
}

my $mode = shift @ARGV // '';
if ( $mode eq 'verify' && @ARGV == 3 ) {
    verify(@ARGV);
}
elsif ( $mode eq 'sign' && @ARGV == 1 ) {
    sign(@ARGV);
}
else {
    die "usage: $0 verify ADDRESS PORT DNS_TIMEOUT | sign OPTIONS_JSON\n";
}

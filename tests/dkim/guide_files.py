"""The guide's OpenDKIM files (secure-email-server-guide.md, "OpenDKIM"), byte for byte: the
config postward-dkim must read unchanged, used by the config tests and the whole-system test."""

GUIDE_CONF = """\
##
## opendkim.conf -- configuration file for OpenDKIM filter
##
Canonicalization        relaxed/relaxed
ExternalIgnoreList      refile:/etc/opendkim/TrustedHosts
InternalHosts           refile:/etc/opendkim/TrustedHosts
KeyTable                refile:/etc/opendkim/KeyTable
LogWhy                  Yes
MinimumKeyBits          1024
Mode                    sv
PidFile                 /var/run/opendkim/opendkim.pid
SigningTable            refile:/etc/opendkim/SigningTable
Socket                  inet:8891@localhost
Syslog                  Yes
SyslogSuccess           Yes
TemporaryDirectory      /var/tmp
UMask                   022
UserID                  opendkim:opendkim
"""
GUIDE_KEY_TABLE = "tristor.ro tristor.ro:mail:/etc/opendkim/mail\n"
GUIDE_SIGNING_TABLE = "*@tristor.ro tristor.ro\n"
GUIDE_TRUSTED_HOSTS = "127.0.0.1\n"

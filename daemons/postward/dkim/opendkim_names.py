"""Every opendkim.conf option name: the ones postward-dkim implements and the ones it refuses.

An option OpenDKIM knows but postward does not implement is a startup error naming it, never
silently ignored: the admin must learn that a feature they configured is gone. The refused set
is the union of opendkim.conf(5) for 2.11, the option table in OpenDKIM's source
(opendkim-config.h, including options behind build flags) and its sample config, so an
OpenDKIM option is never reported as a typo.
"""

from __future__ import annotations

import difflib

IMPLEMENTED = (
    "AlwaysAddARHeader", "AuthservID", "AutoRestart", "Background", "Canonicalization",
    "DNSTimeout", "Domain", "ExternalIgnoreList", "Include", "InternalHosts", "KeyFile",
    "KeyTable", "KeyTableEd25519", "LogWhy", "MaximumHeaders", "MaximumSignaturesToVerify",
    "MilterDebug", "MinimumKeyBits", "Mode", "MultipleSignatures", "Nameservers",
    "On-BadSignature", "On-DNSError", "On-Default", "On-InternalError", "On-KeyNotFound",
    "On-NoSignature", "On-Security", "On-SignatureError", "OversignHeaders", "PeerList",
    "PidFile", "RemoveOldSignatures", "RequireSafeKeys", "ResolverConfiguration", "Selector",
    "SignatureAlgorithm", "SignHeaders", "SigningTable", "Socket", "SoftwareHeader",
    "SubDomains", "Syslog", "SyslogFacility", "SyslogSuccess", "TemporaryDirectory",
    "TrustAnchorFile", "UMask", "UserID", "X-Header",
)

NOT_IMPLEMENTED = (
    "AddAllSignatureResults", "ADSPAction", "ADSPNoSuchDomain", "AllowSHA1Only",
    "AnonymousStatistics", "ATPSDomains", "ATPSHashAlgorithm", "AuthservIDWithJobID",
    "AutoRestartCount", "AutoRestartRate", "BaseDirectory", "BodyLengthDB", "BogusKey",
    "BogusPolicy", "CaptureUnknownErrors", "ChangeRootDirectory", "ClockDrift",
    "DefaultSender", "DiagnosticDirectory", "Diagnostics", "DisableADSP", "DisableCryptoInit",
    "DKIMReputationFail", "DKIMReputationPass", "DKIMReputationReject", "DKIMReputationRoot",
    "DNSConnect", "DomainKeysCompat", "DontSignMailTo", "EnableCoredumps", "ExemptDomains",
    "FinalPolicyScript", "FixCRLF", "FlowData", "FlowDataFactor", "FlowDataTTL",
    "IdentityHeader", "IdentityHeaderRemove", "IgnoreMalformedMail", "KeepAuthResults",
    "KeepTemporaryFiles", "LDAPAuthMechanism", "LDAPAuthName", "LDAPAuthRealm", "LDAPAuthUser",
    "LDAPBindPassword", "LDAPBindUser", "LDAPDisableCache", "LDAPKeepaliveIdle",
    "LDAPKeepaliveInterval", "LDAPKeepaliveProbes", "LDAPSoftStart", "LDAPTimeout",
    "LDAPUseTLS", "LocalADSP", "LogResults", "LuaOnlySigning", "MacroList",
    "MaximumSignedBytes", "Minimum", "MTA", "MTACommand", "MustBeSigned",
    "NoDiscardableMailTo", "NoHeaderB", "OmitHeaders", "On-PolicyError", "On-ReputationError",
    "POPDBFile", "Quarantine", "QueryCache", "RateLimits", "RedirectFailuresTo", "RemoveARAll",
    "RemoveARFrom", "ReplaceHeaders", "ReplaceRules", "ReportAddress", "ReportBccAddress",
    "ReputationCache", "ReputationCacheTTL", "ReputationDuplicates", "ReputationLimitModifiers",
    "ReputationLimits", "ReputationLowTime", "ReputationMinimum", "ReputationRatios",
    "ReputationRRDHashDepth", "ReputationRRDRoot", "ReputationSpamCheck", "ReputationTest",
    "ReputationTimeFactor", "ReputationTimeout", "ReputationVerbose", "RequestReports",
    "RequiredHeaders", "ResignAll", "ResignMailTo", "ResolverTracing", "ScreenPolicyScript",
    "SelectCanonicalizationHeader", "SendADSPReports", "SenderHeaders", "SenderMacro",
    "SendReports", "SetupPolicyScript", "SignatureTTL", "SingleAuthResult", "SMTPURI",
    "SoftStart", "Statistics", "StatisticsName", "StatisticsPolicyScript", "StatisticsPrefix",
    "StrictHeaders", "StrictTestMode", "SyslogName", "TestDNSData", "TestPublicKeys",
    "TrustSignaturesFrom", "UnboundConfigFile", "UnprotectedKey", "UnprotectedPolicy",
    "VBR-Certifiers", "VBR-PurgeFields", "VBR-TrustedCertifiers", "VBR-TrustedCertifiersOnly",
    "VBR-Type", "WeakSyntaxChecks",
)

_REPORTS = "postward-dkim sends no failure reports"
_STATS = "postward-dkim exports Prometheus metrics instead ([metrics] in postward.conf)"
_LUA = "postward-dkim runs no Lua scripts"
_ADSP = "ADSP (RFC 5617) is historic and OpenDKIM 2.11 no longer implements it"
_RESTART = "systemd restarts postward-dkim (Restart= in its unit)"
HINTS = {
    "autorestartcount": _RESTART, "autorestartrate": _RESTART,
    "basedirectory": "write absolute paths instead",
    "changerootdirectory": "use systemd's RootDirectory= for a chroot",
    "syslogname": "postward-dkim logs under its own name",
    "sendreports": _REPORTS, "reportaddress": _REPORTS, "reportbccaddress": _REPORTS,
    "requestreports": _REPORTS, "mtacommand": _REPORTS, "smtpuri": _REPORTS,
    "statistics": _STATS, "statisticsname": _STATS, "statisticsprefix": _STATS,
    "anonymousstatistics": _STATS, "statisticspolicyscript": _LUA,
    "setuppolicyscript": _LUA, "screenpolicyscript": _LUA, "finalpolicyscript": _LUA,
    "adspaction": _ADSP, "adspnosuchdomain": _ADSP, "disableadsp": _ADSP, "localadsp": _ADSP,
    "sendadspreports": _ADSP, "nodiscardablemailto": _ADSP, "on-policyerror": _ADSP,
    "allowsha1only": "RFC 8301 forbids rsa-sha1; postward-dkim never accepts it",
}

_CANONICAL = {name.lower(): name for name in IMPLEMENTED + NOT_IMPLEMENTED}
_IMPLEMENTED = frozenset(name.lower() for name in IMPLEMENTED)


def canonical(name: str) -> str | None:
    """The option's usual spelling (names ignore case, as strcasecmp compares them), or None."""
    return _CANONICAL.get(name.lower())


def is_implemented(name: str) -> bool:
    return name.lower() in _IMPLEMENTED


def refusal(name: str) -> str:
    """The message for an option postward does not implement, or does not know at all."""
    known = canonical(name)
    if known is not None:
        hint = HINTS.get(name.lower())
        reason = f" ({hint})" if hint else ""
        return (f"{known} is an OpenDKIM option postward-dkim does not implement{reason}; "
                f"remove it")
    base, eq, rest = name.partition("=")
    if eq and canonical(base):
        return (f"unknown option {name!r}: opendkim.conf lines are 'Name value', not "
                f"'Name=value'; write '{canonical(base)} {rest}'")
    close = difflib.get_close_matches(name.lower(), list(_CANONICAL), n=1, cutoff=0.75)
    did_you_mean = f" (did you mean {_CANONICAL[close[0]]}?)" if close else ""
    return (f"unknown option {name!r}{did_you_mean}; OpenDKIM would refuse it too: "
            f"see opendkim.conf(5)")

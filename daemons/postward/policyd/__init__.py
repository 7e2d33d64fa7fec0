"""postward-policyd: a postfwd-compatible policy daemon with DNSBL scoring and greylisting."""

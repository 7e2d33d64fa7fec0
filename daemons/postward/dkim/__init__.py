"""postward-dkim: a DKIM sign/verify milter that reads OpenDKIM's config files."""

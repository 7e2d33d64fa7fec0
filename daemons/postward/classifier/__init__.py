"""postward-filter and postward-classifierd: a token spam classifier in place of dspam."""

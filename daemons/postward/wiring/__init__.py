"""Wiring postward into the admin's Postfix and Dovecot from the shipped snippet files.

``postward postfix-config`` and ``postward dovecot-config`` read ``postfix-snippets/`` (found by
:mod:`postward.wiring.locate`), print the commands that apply them, or apply them idempotently.
The test bed parses the same files with :mod:`postward.wiring.snippets`, so what the tests
exercise is what these commands install.
"""

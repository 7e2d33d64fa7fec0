"""postward: the anti-spam and mail-authentication layer of a self-hosted Postfix server.

One package, a shared core (``postward.core``) and one subpackage per daemon.
"""

__version__ = "0.1.0"

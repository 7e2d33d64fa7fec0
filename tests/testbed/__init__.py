"""A test bed of real daemons: Redis, unbound, rbldnsd and Postfix, each in a private directory,
bound to a private loopback address, and torn down with everything it started.

The same classes serve the pytest fixtures (``tests/conftest.py``) and the demo (``tests/demo.py``).
"""

"""What every postward daemon shares: config, Redis, DNS, metrics, logging, clock, service loop.

Each module is imported by name (``from postward.core.config import load_config``); this package
re-exports nothing, so importing one piece never drags in the others.
"""

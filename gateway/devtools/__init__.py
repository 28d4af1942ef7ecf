"""Tools for development and tests: the IDP simulator, the sandbox, the demo, a fault proxy.

They ship in the image for ``gateway sim`` and ``gateway demo``; only ``gateway.cli`` and
the tests import them.
"""

"""The fleet's shared state in Redis, as the sidecars write it and everyone reads it.

Keys (``store``), the election record and views (``records``), which brokers the
sidecars of a group have (``membership``), and the statistics hashes (``stats``). Part of
the shared core: the operator reads it without loading the sidecar.
"""

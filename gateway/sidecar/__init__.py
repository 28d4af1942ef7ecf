"""The sidecar: the gRPC server next to a game, speaking MQTT to the table's detectors.

``app`` runs it (lifecycle), ``assembly`` builds its parts, ``service`` is the gRPC edge,
``rounds`` the rounds in flight, ``brokers`` and ``broker_link`` the MQTT side,
``election`` and ``shared_election`` who is active. It imports the shared core and
itself, never the SDK (``gateway.client``), the facade or the dev tools.
"""

"""studio-gateway: live-casino round results from camera-based detectors, over gRPC.

The rooms are described in ``docs/architecture.md``.
"""

"""A kopf operator for GameTable resources: renders each table's sidecar configuration."""

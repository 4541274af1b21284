"""P2: TCP ingest, the in-process bus, analytics and forensics consumers, metrics."""

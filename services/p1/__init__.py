"""P1: Coinbase WebSocket ingest → validated, stamped events → framed TCP to P2."""

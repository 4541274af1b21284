"""Replay: send a recorded JSONL stream to P2 as P1 would, optionally with seeded, countable anomalies."""

"""The parsing-limit reader counts what it parses, across any chunking."""

from __future__ import annotations

from benchmarks.baseline_reader import ParseCounter
from mercurystream.shared.framing import encode_frames


def test_counts_objects_and_invalid_payloads_across_chunks():
    data = encode_frames([b'{"a":1}', b"not json", b'{"b":2}', b"[1]"])
    c = ParseCounter()
    total = sum(c.feed(data[i : i + 3]) for i in range(0, len(data), 3))
    assert total == c.events == 3  # a JSON array still parses: the baseline does no schema work
    assert c.invalid == 1
    assert c.decoder.frames == 4

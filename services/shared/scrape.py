"""Read a Prometheus text endpoint into a flat mapping: for the demo, end-to-end tests and benchmarks."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


class Sample(dict):
    """``{(name, frozenset(labels.items())): value}`` with helpers."""

    def value(self, name: str, **labels: str) -> float:
        """The sample's value, 0.0 if absent (counters that never moved are not exported with labels)."""
        return self.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """Sum over every label set that contains ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.items() if n == name and want <= ls)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for (n, ls), v in self.items():
            if n == name:
                for k, lv in ls:
                    if k == label:
                        out[lv] = out.get(lv, 0.0) + v
        return out


def parse(text: str) -> Sample:
    out = Sample()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def scrape(url: str, timeout: float = 2.0) -> Sample:
    """GET ``url`` (a /metrics endpoint) and parse it; raises OSError when it does not answer."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return parse(resp.read().decode())

"""Bounded metric labels: at most ``MAX_PRODUCT_LABELS`` products get a label of their own.

A feed decides how many products there are; Prometheus pays for every label value it is sent
(one time series each, kept for its retention), and ``/metrics`` grows with them. So the first
products seen keep their label for the process's life (a label never moves), and every later one
is folded into ``product_id="_other"``: summed where the figure adds up (a volume, a count, a 0/1
flag), left out where it does not (a VWAP, a volatility), and counted either way in the
``..._unlabelled_products`` gauge each capped family exports next to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily

from mercurystream.shared.clip import LABEL_MAX, clip

OTHER = "_other"
MAX_PRODUCT_LABELS = 100
"""Default of ``MAX_PRODUCT_LABELS`` (P1 and P2): products with a label of their own per metric."""


def capped(
    items: Iterable[tuple[str, float]], max_labels: int, combine: Callable[[list[float]], float] | None = sum
) -> tuple[list[tuple[str, float]], int]:
    """The first ``max_labels`` items under their own (clipped) label, the rest under :data:`OTHER`.

    ``combine`` folds the rest into one value (``None``: they are left out). Returns the samples,
    sorted by label, and how many items had no label of their own.
    """
    items = list(items)
    own = [(clip(k, LABEL_MAX), v) for k, v in items[:max_labels]]
    rest = [v for _, v in items[max_labels:]]
    own.sort()
    if rest and combine is not None:
        own.append((OTHER, float(combine(rest))))
    return own, len(rest)


class ProductGauge:
    """A gauge per ``product_id`` that the owner sets as a dict entry and a scrape reads, capped.

    ``set`` is one dict store instead of a labelled ``Gauge``'s child lookup and lock, for figures
    set per product on every batch. Products keep the order they were first set in, which decides
    who gets a label (:func:`capped`). ``additive``: the products past the cap are summed under
    :data:`OTHER`; otherwise they are left out. Either way ``<name>_unlabelled_products`` says how
    many there are.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        max_labels: int = MAX_PRODUCT_LABELS,
        *,
        additive: bool = False,
        extra: tuple[str, Callable[[str], str]] | None = None,
    ) -> None:
        """``extra`` is ``(label, of)``: one more label whose value is ``of(product_id)`` (no more series).

        With it, the products past the cap are folded per value of that label (``_other`` once per
        quote currency, say), since summing across it would add unlike units.
        """
        self.name = name
        self.extra = extra
        self.documentation = documentation
        self.max_labels = max_labels
        self.additive = additive
        self.values: dict[str, float] = {}

    def set(self, product_id: str, value: float) -> None:
        self.values[product_id] = value

    def collect(self):
        # list() copies the items in one C call, so a product added meanwhile cannot break the loop.
        items = list(self.values.items())
        extra = self.extra
        if extra is None:
            samples, unlabelled = capped(items, self.max_labels, sum if self.additive else None)
            family = GaugeMetricFamily(self.name, self.documentation, labels=["product_id"])
            for pid, v in samples:
                family.add_metric([pid], float(v))
            yield family
        else:
            label, of = extra
            family = GaugeMetricFamily(self.name, self.documentation, labels=["product_id", label])
            own = sorted((clip(k, LABEL_MAX), clip(of(k), LABEL_MAX), v) for k, v in items[: self.max_labels])
            rest: dict[str, float] = {}
            for k, v in items[self.max_labels :]:
                e = clip(of(k), LABEL_MAX)
                rest[e] = rest.get(e, 0.0) + v
            unlabelled = max(0, len(items) - self.max_labels)
            for pid, e, v in own:
                family.add_metric([pid, e], float(v))
            if self.additive:
                for e, v in sorted(rest.items()):
                    family.add_metric([OTHER, e], float(v))
            yield family
        yield GaugeMetricFamily(
            f"{self.name}_unlabelled_products",
            f"Products of {self.name} past MAX_PRODUCT_LABELS, without a label of their own",
            value=unlabelled,
        )

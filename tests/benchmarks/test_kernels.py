"""``python -m benchmarks.kernels`` prices every kernel on both shapes, so the benchmark cannot rot. Never speed."""

from __future__ import annotations

import json

import pytest

from benchmarks.kernels import DECODE, FORM, RULES, SHAPES, TIMES, main, shape_batches
from benchmarks.stream import generate_pool
from mercurystream.p2.config import P2Settings
from mercurystream.p2.detectors import Detectors
from mercurystream.shared.wire import _rowscan


def test_it_prices_every_rule_with_a_kernel_on_both_shapes(capsys: pytest.CaptureFixture) -> None:
    assert main(["--events", "1500", "--repeats", "1", "--batch", "100"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["kernels"]) - {DECODE, TIMES, FORM} == {r.name for r in RULES}
    assert (DECODE in result["kernels"]) == (_rowscan is not None), "the read decode's kernel is priced when built"
    assert (TIMES in result["kernels"]) == (FORM in result["kernels"]) == (_rowscan is not None), "time kernels too"
    for priced in result["kernels"].values():
        assert priced["module"] in ("detectors", "analytics", "shared.wire", "shared.timeparse")
        for shape in SHAPES:
            assert priced[shape]["kernel_us_per_event"] > 0 and priced[shape]["reference_us_per_event"] > 0
            assert priced[shape]["speedup"] > 0
        assert priced["pays"] == any(priced[s]["speedup"] >= result["pays_at"] for s in SHAPES)


def test_every_rule_that_has_a_kernel_is_priced() -> None:
    from tests.p2.test_rule import CASES

    settings = P2Settings()
    assert {type(case.make()) for case in CASES.values()} == {type(r.make(settings)) for r in RULES}


def test_the_storm_is_all_duplicates_and_out_of_order_and_p1_is_clean() -> None:
    pool = generate_pool(2_000)
    prime, storm = shape_batches("storm", 1_000, 100, pool)
    detectors = Detectors()
    for batch in prime:
        detectors.process(batch)
    assert detectors.counts["duplicate"] == 0
    for batch in storm:
        detectors.process(batch)
    sent = sum(map(len, storm))
    assert sent == 1_000
    assert detectors.counts["duplicate"] == sent and detectors.counts["out_of_order"] == sent
    _, p1 = shape_batches("p1", 1_000, 100, pool)
    # Twice round the pool: its second cycle trades a day later, far past what P2 takes ahead of a read.
    _, long = shape_batches("p1", 4_000, 500, generate_pool(2_000))
    for batch in (*prime, *storm, *long):
        assert not batch.trades().rejects, "every event reaches the windows as a valid trade"
    clean = Detectors()
    for batch in p1:
        assert clean.process(batch).anomalies() == []


def test_bad_arguments_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["--batch", "0"])
    assert info.value.code == 2

"""``make benchmark``: throughput, latency and memory of the real services, measured over the real protocol.

Entry point: ``python -m benchmarks.run``. The load generator (:mod:`benchmarks.loadgen`) and the
parsing-limit reader (:mod:`benchmarks.baseline_reader`) run as processes of their own, like the services.
"""

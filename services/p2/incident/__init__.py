"""Incident bundles: the atomic writer (``bundle``), the Markdown report (``report``) and the chart.

Deliberately empty of imports: ``python -m mercurystream.p2.incident.chart`` and ``mercury-report``
load only what they use.
"""

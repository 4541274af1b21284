"""MercuryStream: Coinbase trades → P1 ingest → framed TCP → P2 bus → analytics and forensics."""

__version__ = "0.1.0"

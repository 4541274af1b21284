"""The offline exchange: a local server that speaks Coinbase Exchange's websocket feed protocol.

``market`` simulates trades, ``faults`` corrupts a client's stream on purpose, ``protocol`` holds
one client's subscriptions, and ``exchange`` is the asyncio server and the ``mercury-exchange`` CLI.
"""

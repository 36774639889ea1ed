"""National data exchange: signed, schema-validated, verifiable records between agency nodes.

The folders follow the flow *node → gate → ledger → feed → node*:

- ``exchange.core``: the pure core, every protocol decision and no I/O (no event loop, HTTP,
  database, NATS or logging; no clock, no randomness: time and seeds come in as arguments).
  ``seal`` (what a publisher does to a batch), ``gate`` (check a batch, decide a group of
  batches), ``ledger`` (the append plan every store executes, the receipts), ``feed`` (a
  subscription: credits, acks, redelivery, frames, the projection), ``verify`` (the subscriber's
  side), beside ``envelope``, ``disclosure``, ``merkle``, ``signing``, ``receipts``, ``tlog``,
  ``access``, ``quality``, ``errors`` (one catalogue of codes), ``wire`` and ``datasets``.
- The shell moves bytes and calls the core: ``broker`` (the aiohttp app and its pumps),
  ``store`` (sqlite; NATS JetStream), ``node`` (the SDK), ``pki`` (the exchange CA),
  ``sim`` (the reference agencies and the demo), ``cli``, ``audit``, ``clock``, ``logger``.
"""

__version__ = "0.1.0"

"""The scale-out store on NATS JetStream: ``store`` (streams, appends, the ``Store`` protocol),
``direct`` (direct gets), ``tailer`` (what each broker derives from the records stream), ``kv``
(subscription positions, quality counters) and ``server`` (a local nats-server for tests, the demo
and the bench)."""

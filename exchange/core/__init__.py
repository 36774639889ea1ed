"""The pure core: every protocol decision, no I/O (see ``exchange``)."""

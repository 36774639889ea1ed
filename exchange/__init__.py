"""National data exchange: signed, schema-validated, verifiable records between agency nodes.

The pure core (``envelope``, ``merkle``, ``signing``, ``disclosure``, ``datasets``, ``errors``)
does no I/O and imports no network or database library; the shell (``broker``, ``store``,
``node``, ``cli``) does the I/O around it.
"""

__version__ = "0.1.0"

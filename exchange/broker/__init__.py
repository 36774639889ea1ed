"""The central broker: an aiohttp application over a store (the shell around the pure core)."""

"""The decision API: a payment asks, the engine that owns the card decides, in milliseconds
(docs/api.md, docs/adr/0007)."""

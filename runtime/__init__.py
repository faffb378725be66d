"""The bundled inference runtime: models over a paged KV cache, attention backends, weight loading."""

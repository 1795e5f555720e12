"""From image keys to embeddings: load, decode, cache, embed (any strategy)."""

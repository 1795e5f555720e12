"""Server-side ID embeddings: key index, row storage, sparse optimizers."""

"""Samples: the schema, Parquet days, the streaming reader, the synthetic world."""

"""The server role: ID shards, image channels, the passive step loop."""

"""The two roles of an hvams job: servers and workers."""

"""The hvams command line."""

"""hvams: Advanced Model Server trainer for image-aware CTR models."""
__version__ = "0.1.0"

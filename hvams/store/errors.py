"""Typed image errors, which servers turn into "missing image" embeddings."""


class ImageError(Exception):
    """An image that cannot be served; ``key`` names it."""

    def __init__(self, key: int, reason: str, name: str | None = None):
        self.key, self.reason, self.name = key, reason, name
        label = f"{name} (id {key})" if name else f"id {key}"
        super().__init__(f"image {label}: {reason}")


class MissingImageError(ImageError):
    """The key is not in the store."""


class CorruptImageError(ImageError):
    """The stored bytes do not decode to an image within the limits."""

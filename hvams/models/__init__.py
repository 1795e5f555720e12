"""Worker-side CTR models (idonly, din, dicm, din+img) and the image embedder."""
from .registry import build_model  # noqa: F401

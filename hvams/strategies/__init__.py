"""Image strategies: where the image model runs and what travels for an image key.

``Strategy`` names them (the config's ``strategy`` key); each member leads to
its class, which owns everything that differs between strategies: the image
channel spec, the server's image channel, the worker's local images, and
where the image model's state is saved, restored, warm-started and exported
(``base.ImageStrategy`` lists the methods). Code elsewhere asks the strategy
object; it never compares strategy names or channel types. A new strategy is
one member here, one class in its own module and one line in ``registry``.
"""
from __future__ import annotations

from enum import StrEnum


class Strategy(StrEnum):
    AMS = "ams"                          # servers embed; 12 floats per image travel
    STORE_IN_SERVER = "store-in-server"  # servers send pixels (or frozen features)
    STORE_IN_WORKER = "store-in-worker"  # workers read the store themselves


def strategy_for(cfg):
    """The strategy object of ``cfg``: its ``strategy``, or ``NoImages`` for a model
    without images (idonly, din)."""
    from .registry import build

    return build(cfg)

"""Each ``Strategy`` member's class: the one place a new strategy is registered."""
from __future__ import annotations

from . import Strategy
from .ams import Ams
from .base import NoImages
from .store_in_server import StoreInServer
from .store_in_worker import StoreInWorker

CLASSES = {Strategy.AMS: Ams, Strategy.STORE_IN_SERVER: StoreInServer,
           Strategy.STORE_IN_WORKER: StoreInWorker}


def build(cfg) -> NoImages:
    if not cfg.uses_images:
        return NoImages(cfg)
    return CLASSES[Strategy(cfg.strategy)](cfg)

"""The peer: the same ID-only CTR model trained with TorchRec (``hvams bench peer``).

``vocab`` maps raw ids to table rows, ``model`` is hvams's idonly over a
TorchRec ``EmbeddingBagCollection``, ``sharding`` plans and shards it with
``DistributedModelParallel``, and ``train`` is the plain training loop that
one process or a ``torchrun`` job runs.
"""

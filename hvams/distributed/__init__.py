"""Process layout of an hvams job: rank roles, communicators, Horovod sets."""

"""The hvams command line."""
import sys

if sys.argv[1:2] == ["train"]:
    # before click, torch and the config: a scheduler's signal in the first second
    from hvams.distributed.preemption import EARLY

    EARLY.hold()

"""``python -m cli``: the same as the ``hvams`` console script."""
from cli.main import main

main()

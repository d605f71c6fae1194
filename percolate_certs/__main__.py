"""``python -m percolate_certs``: the same as the ``percolate-certs`` console script."""
import sys

from .cli import main

sys.exit(main())

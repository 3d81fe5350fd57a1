"""``python -m lib.zoo train [--scale S] [--seed K] [--families ...]``: see :func:`lib.zoo.train_book`."""
import sys

from .book import main

sys.exit(main())

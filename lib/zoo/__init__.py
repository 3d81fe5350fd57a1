"""The model zoo: trained models cached on disk, and the book's model families.

* ``lib.zoo.store``: :func:`get` a model trained with a recipe from a seed (trained once, then
  read from the cache), its :func:`model_key`, :func:`info` and the cache folder :func:`zoo_dir`.
* ``lib.zoo.book``: the book's families at a scale (:func:`book_models`, from
  :func:`lib.settings.model_families`), :func:`load_family` and :func:`load_pairs` for chapters, and
  the zoo step that trains them all before a build (:func:`train_book`, ``python -m lib.zoo train``).
"""
from .book import (book_models, book_plan, estimate_book_seconds, estimate_seconds, load_family, load_pairs, main,
                   replicate_seeds, throughput, train_book)
from .store import canonical_arch, get, info, model_key, zoo_dir

__all__ = ["get", "info", "model_key", "canonical_arch", "zoo_dir", "replicate_seeds",
           "book_models", "load_family", "load_pairs", "book_plan", "throughput",
           "estimate_seconds", "estimate_book_seconds", "train_book", "main"]

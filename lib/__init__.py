"""Library behind the reproduction of "On the Symmetries of Deep Learning Models and their Internal
Representations" (Godfrey, Brown, Emerson, Kvinge, NeurIPS 2022).

One module per concept: ``config`` (device, scales, caches), ``groups`` (intertwiner groups and
weight-space symmetries), ``models``, ``data``, ``train``, ``zoo`` (trained-model cache), ``stitching``,
``metrics``, ``dissection``, ``plotting``, ``results`` and ``sweep``.
"""
__version__ = "0.1.0"

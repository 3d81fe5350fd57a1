"""Library behind the reproduction of "On the Symmetries of Deep Learning Models and their Internal
Representations" (Godfrey, Brown, Emerson, Kvinge, NeurIPS 2022).

One module per concept: ``config`` (device, scales, caches), ``groups`` (activations and intertwiner
groups), ``symmetry`` (their action on weights), ``models`` (with ``convnext``), ``data``, ``train``, ``zoo``
(trained-model cache), ``stitching``, ``rotation``, ``metrics`` (similarity measures; built on
``preprocessing`` and ``gram``, all-layer comparisons in ``similarity``), ``dissection`` (with
``dissection_study``, the concept data reader ``broden`` and generator ``synthetic_concepts``), ``plotting``,
``results`` and ``sweep``. Names moved out of ``groups``, ``metrics``, ``dissection``, ``broden`` and
``models`` stay importable from those modules.
"""
__version__ = "0.1.0"

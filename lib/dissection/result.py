"""The result of a dissection under rotations (:func:`lib.dissection.dissect`), and the
invariants every such result satisfies."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["DissectionResult"]

_ARRAYS = ("interpretable", "unique", "by_category", "iou")


@dataclasses.dataclass
class DissectionResult:
    """What :func:`lib.dissection.dissect` found, per rotation path position and rotation.

    Attributes
    ----------
    layer : str
        The dissected layer.
    alphas : list of float
        Positions on the rotation paths, in [0, 1] (alpha 0 is the unrotated basis).
    n_rotations, n_images, n_units : int
        Random rotations per alpha, images of the concept dataset, units of the layer.
    concepts, concept_categories, categories : list of str
        The dataset's concepts, each concept's category, and the categories.
    quantile, iou_threshold : float
        NetDissect's settings: the fraction of a unit's activations above its threshold, and the IoU
        a detector exceeds.
    interpretable : numpy.ndarray
        int ``(n_alphas, n_rotations)``: detector units at ``alphas[a]`` for rotation ``r`` (the
        alpha-0 row is the same in every column).
    unique : numpy.ndarray
        int ``(n_alphas, n_rotations)``: distinct concepts the detectors detect.
    by_category : numpy.ndarray
        int ``(n_alphas, n_rotations, n_categories)``: detectors whose concept is in
        ``categories[k]``.
    iou : numpy.ndarray
        float64 ``(n_units, n_concepts)``: the IoU matrix (a fraction) of the unrotated basis.
    labels : list of dict
        One per unit of the unrotated basis: ``unit``, ``concept``, ``category``, ``iou``,
        ``detector``.
    """

    layer: str
    alphas: list
    n_rotations: int
    n_images: int
    n_units: int
    concepts: list
    concept_categories: list
    categories: list
    quantile: float
    iou_threshold: float
    interpretable: np.ndarray
    unique: np.ndarray
    by_category: np.ndarray
    iou: np.ndarray
    labels: list

    @property
    def interpretable_mean(self) -> np.ndarray:
        """float ``(n_alphas,)``: detector units per alpha, mean over the rotations."""
        return self.interpretable.mean(1)

    @property
    def interpretable_std(self) -> np.ndarray:
        """float ``(n_alphas,)``: detector units per alpha, standard deviation over rotations."""
        return self.interpretable.std(1)

    @property
    def unique_mean(self) -> np.ndarray:
        """float ``(n_alphas,)``: distinct detected concepts per alpha, mean over the rotations."""
        return self.unique.mean(1)

    @property
    def unique_std(self) -> np.ndarray:
        """float ``(n_alphas,)``: distinct detected concepts per alpha, standard deviation over the
        rotations."""
        return self.unique.std(1)

    def interpretable_fraction(self) -> tuple:
        """The fraction of the layer's units that are detectors, per alpha.

        Returns
        -------
        mean, std : numpy.ndarray
            float ``(n_alphas,)`` each: mean and standard deviation over the rotations, as fractions
            of ``n_units``.
        """
        return self.interpretable_mean / self.n_units, self.interpretable_std / self.n_units

    def invariants(self) -> dict:
        """The properties every dissection result has, whatever the model and data.

        Returns
        -------
        dict
            ``{statement: bool}``: the alpha-0 row is the unrotated dissection (equal for every
            rotation, and its detector count is that of ``labels``); counts lie in
            ``[0, n_units]``; distinct concepts never exceed detectors; the per-category counts add
            up to the detector count.
        """
        inter, unique = self.interpretable, self.unique
        return {
            "alpha 0 equal for every rotation": bool(
                (inter[0] == inter[0, 0]).all() and (unique[0] == unique[0, 0]).all()
            ),
            "alpha 0 detectors = labelled detectors": bool(
                inter[0, 0] == sum(lab["detector"] for lab in self.labels)
            ),
            "0 <= detectors <= units": bool(((0 <= inter) & (inter <= self.n_units)).all()),
            "0 <= concepts <= detectors": bool(((0 <= unique) & (unique <= inter)).all()),
            "categories add up to detectors": bool(np.array_equal(self.by_category.sum(2), inter)),
        }

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (arrays as nested lists); :meth:`from_dict` inverts it.

        Returns
        -------
        dict
            The fields by name.
        """
        d = dataclasses.asdict(self)
        for k in _ARRAYS:
            d[k] = np.asarray(d[k]).tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DissectionResult":
        """The result that :meth:`to_dict` wrote.

        Parameters
        ----------
        d : dict
            The fields by name, arrays as nested lists.

        Returns
        -------
        DissectionResult
        """
        d = dict(d)
        for k in _ARRAYS:
            d[k] = np.asarray(d[k])
        return cls(**d)

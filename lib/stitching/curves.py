"""Test-penalty curves: when to evaluate within an epoch, and whether a curve has settled.

A curve is a list of rows with ``epoch`` (fractional when evaluated within an epoch) and
``penalty``; :func:`lib.stitching.train_stitch` and :func:`lib.stitching.finetune.finetune_tail`
write them.
"""

from __future__ import annotations

__all__ = ["check_evals_per_epoch", "eval_steps", "last_quarter_change"]


def check_evals_per_epoch(evals_per_epoch) -> None:
    """Raise a ValueError unless ``evals_per_epoch`` is an integer >= 1 (test evaluations per
    epoch)."""
    if (
        isinstance(evals_per_epoch, bool)
        or not isinstance(evals_per_epoch, int)
        or evals_per_epoch < 1
    ):
        raise ValueError(
            f"evals_per_epoch must be an integer >= 1 (test evaluations per epoch), "
            f"got {evals_per_epoch!r}"
        )


def eval_steps(n_batches: int, evals_per_epoch: int) -> dict:
    """The steps of an epoch after which the test penalty is evaluated.

    Parameters
    ----------
    n_batches : int
        Steps per epoch.
    evals_per_epoch : int
        Evaluations per epoch (at most one per step).

    Returns
    -------
    dict
        ``{step index within the epoch (0-based): fraction of the epoch done}``, evenly spaced, the
        last step always included as the integer 1, so that ``epoch + fraction`` labels a row at an
        epoch's end with an integer.
    """
    check_evals_per_epoch(evals_per_epoch)
    k = min(evals_per_epoch, max(1, n_batches))
    return {max(0, round(n_batches * q / k) - 1): q / k if q < k else 1 for q in range(1, k + 1)}


def last_quarter_change(history: list) -> float:
    """How much the test penalty still moves at the end of training.

    Parameters
    ----------
    history : list of dict
        Rows with ``epoch`` (possibly fractional, ``StitchSettings.evals_per_epoch``) and
        ``penalty`` (a fraction), the start as row 0 (:func:`train_stitch` with penalties added by
        ``stitch_experiment``, or :func:`lib.stitching.sanity.rotation_penalty`).

    Returns
    -------
    float
        ``|penalty(E) - penalty(e)|`` in percentage points, where ``E`` is the last row's epoch and
        ``e`` the latest evaluated epoch at or before ``0.75 E``: the change over (at least) the
        last 25 % of training. 0 when nothing was trained.
    """
    last = history[-1]
    if not last["epoch"]:
        return 0.0
    ref = max((h for h in history if h["epoch"] <= 0.75 * last["epoch"]), key=lambda h: h["epoch"])
    return abs(100 * last["penalty"] - 100 * ref["penalty"])

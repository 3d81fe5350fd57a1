"""Tests of lib.metrics.registry: every measure by name, what each entry promises, and the dispatch
that reads it (similarity_matrices, normalized_gram, lib.grounding)."""

import inspect

import numpy as np
import pytest
import torch
from reference import conv_features, related

import lib.metrics as M
from lib import grounding
from lib.metrics import layers, registry

NAMES = list(M.MEASURES)


@pytest.mark.parametrize("name", NAMES)
def test_entry_is_the_function_of_its_name(name):
    spec = M.MEASURES[name]
    assert spec.function is getattr(M, name)
    assert spec.kind in M.KINDS
    assert spec.label and spec.invariance and spec.preprocessing


@pytest.mark.parametrize("name", NAMES)
def test_functions_take_the_options_the_entry_names(name):
    spec = M.MEASURES[name]
    params = inspect.signature(spec.function).parameters
    assert {"dtype", "device", *spec.options} <= set(params)
    # An option the entry does not name would be dropped by pick: the function must not take it.
    assert not (set(M.OPTIONS) - set(spec.options)) & set(params)
    if spec.gram is not None:
        params = inspect.signature(spec.gram).parameters
        assert {"dtype", "device", "name", *spec.options} <= set(params)
        assert not (set(M.OPTIONS) - set(spec.options)) & set(params)


@pytest.mark.parametrize("name", [n for n, m in M.MEASURES.items() if m.gram is not None])
@pytest.mark.parametrize("seed", [0, 1])
def test_gram_form_inner_product_is_the_measure(name, seed):
    spec = M.MEASURES[name]
    x = conv_features(seed, n=24, c=5, h=3, w=3)
    y = related(conv_features(seed, n=24, c=5, h=3, w=3), seed, 0.5)
    kw = spec.pick(zero_channels="keep")
    K, L = (spec.gram(a, dtype=torch.float64, device="cpu", name="X", **kw) for a in (x, y))
    assert float(torch.linalg.matrix_norm(K)) == pytest.approx(1.0, abs=1e-12)
    assert float((K * L).sum()) == pytest.approx(spec.function(x, y, **kw), abs=1e-10)


def test_derived_name_lists_keep_their_order():
    # Chapter 7's memo keys hold the paper's measures and chapter 12's the matrix measures, in
    # order: these tuples must not change with the registry's layout.
    assert M.PAPER_MEASURES == (
        "grelu_cka",
        "orthogonal_cka",
        "linear_cka",
        "grelu_procrustes",
        "orthogonal_procrustes",
    )
    assert (
        M.MATRIX_MEASURES
        == grounding.MEASURES
        == (
            "grelu_cka",
            "psd_grelu_cka",
            "orthogonal_cka",
            "linear_cka",
            "grelu_procrustes",
            "orthogonal_procrustes",
        )
    )
    assert set(M.MATRIX_MEASURES) == {n for n, m in M.MEASURES.items() if m.matrix}
    assert len({m.label for m in M.MEASURES.values()}) == len(M.MEASURES)


def test_unknown_names_are_value_errors_listing_the_names():
    every = ", ".join(map(repr, M.MEASURES))
    with pytest.raises(ValueError, match=f"^unknown measure 'cca'; accepted values: {every}$"):
        M.get_measure("cca")
    matrix = (
        "'grelu_cka', 'psd_grelu_cka', 'orthogonal_cka', 'linear_cka', 'grelu_procrustes', "
        "'orthogonal_procrustes'"
    )
    with pytest.raises(ValueError, match=f"^unknown measure 'rbf_cka'; accepted values: {matrix}$"):
        M.get_measure("rbf_cka", M.MATRIX_MEASURES)
    assert M.get_measure("rbf_cka") is M.MEASURES["rbf_cka"]
    with pytest.raises(ValueError, match="^unknown measure 'rbf_cka'"):
        grounding.similarities_to(np.ones((8, 2)), [np.ones((8, 2))], ["rbf_cka"])


def test_entries_are_checked():
    with pytest.raises(
        ValueError, match="^unknown kind 'cca'; accepted values: 'cka', 'procrustes'$"
    ):
        M.Measure(function=M.grelu_cka, kind="cca", invariance="-", preprocessing="-", label="-")
    with pytest.raises(ValueError, match="^unknown option 'beta'"):
        M.Measure(
            function=M.grelu_cka,
            kind="cka",
            invariance="-",
            preprocessing="-",
            label="-",
            options=("beta",),
        )
    with pytest.raises(ValueError, match="^unknown option 'zero_channel'"):
        M.MEASURES["grelu_cka"].pick(zero_channel="keep")
    assert M.MEASURES["orthogonal_procrustes"].pick(zero_channels="keep", block_size=4) == {}
    assert M.MEASURES["grelu_procrustes"].pick(zero_channels="keep", block_size=4) == {
        "zero_channels": "keep"
    }


def test_a_new_entry_is_all_a_new_measure_needs(monkeypatch):
    # The dispatch reads the entry: a registered pairwise measure is computed by its own function,
    # and one with a Gram form through that form.
    def half(X, Y, *, dtype=torch.float64, device=None):
        return 0.5

    def unit(X, *, dtype=torch.float64, device=None, name="X"):
        K = torch.eye(len(X), dtype=dtype)
        return K / torch.linalg.matrix_norm(K)

    toys = {
        "half": registry.Measure(
            function=half,
            kind="procrustes",
            invariance="everything",
            preprocessing="none",
            label="half",
        ),
        "unit": registry.Measure(
            function=half,
            kind="cka",
            invariance="everything",
            preprocessing="none",
            label="unit",
            gram=unit,
        ),
    }
    monkeypatch.setattr(registry, "MEASURES", {**registry.MEASURES, **toys})
    monkeypatch.setattr(layers, "MATRIX_MEASURES", (*registry.MATRIX_MEASURES, *toys))
    feats = {"a": conv_features(0, n=8, c=2, h=2, w=2), "b": conv_features(1, n=8, c=2, h=1, w=1)}
    out = M.similarity_matrices(feats, feats, ("half", "unit"))
    np.testing.assert_array_equal(out["half"], [[0.5, np.nan], [np.nan, 0.5]])
    np.testing.assert_allclose(out["unit"], 1.0)

"""Memory that does not grow with the number of images: activation matching, the closed-form starts'
sums and feature extraction stream over images in chunks.

Peak memory is read from PyTorch's CPU allocator, whose every allocation and free the profiler
records (``profile_memory=True``): the peak is the highest running total of live bytes allocated
inside the measured call (inputs allocated before it do not count). Each flatness check is paired
with the same measurement of the one-shot computation, which must grow about 4x from N to 4N
images, so that a check that could not fail (e.g. a measurement that sees nothing) fails instead.
"""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from lib import models, stitching
from lib.data import to_input
from lib.similarity import layer_features
from lib.stitching import sanity

N = 256
MYRTLE = dict(arch="myrtle_cnn", width=0.25)
MYRTLE_NOBN = dict(arch="myrtle_cnn", width=0.25, batchnorm=False)
#: The largest growth from N to 4N images allowed for a streamed computation.
FLAT = 1.3
#: The smallest growth expected of the one-shot computation (ideally 4).
GROWS = 3.5


def peak_bytes(fn) -> int:
    """The peak of live bytes that ``fn()`` allocates on the CPU, above what was live before it."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Each "[memory]" event is one allocation (nbytes > 0) or free (nbytes < 0) of the CPU
    # allocator.
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def growth(measure) -> tuple:
    """``(peak at N, peak at 4N)`` of ``measure(n)``, and their ratio."""
    small, large = measure(N), measure(4 * N)
    assert small > 0
    return small, large, large / small


def images(n, seed):
    """``n`` random uint8 images ``(n, 32, 32, 3)``."""
    return torch.randint(
        0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


@pytest.fixture(scope="module")
def pair():
    a, b = (models.build(MYRTLE, seed=s).eval() for s in (0, 1))
    x = images(4 * N, 0)
    fa = stitching.front_features(a, "act1", x, device="cpu")[0]
    fb = stitching.front_features(b, "act1", x, device="cpu")[0]
    return a, b, x, fa, fb


def one_shot_matching(fa, fb):
    # The computation before streaming: both feature sets as (n·h·w, C) float64 copies at once.
    xa, xb = stitching.channels_last_2d(fa), stitching.channels_last_2d(fb)
    return stitching.matching_from_moments(stitching.moments_of(xa, xb))


def one_shot_cat(front, x, batch_size):
    # Feature extraction before streaming: a list of every batch's outputs, then torch.cat.
    return torch.cat([front(x[s : s + batch_size])[0] for s in range(0, len(x), batch_size)])


def test_activation_matching_memory_is_flat_in_the_number_of_images(pair):
    _, _, _, fa, fb = pair
    old = growth(lambda n: peak_bytes(lambda: one_shot_matching(fa[:n], fb[:n])))
    assert old[2] >= GROWS, old
    for kwargs in ({}, {"chunk_size": 64}, {"chunk_size": 100}):
        new = growth(
            lambda n, kw=kwargs: peak_bytes(
                lambda: stitching.activation_matching(fa[:n], fb[:n], **kw)
            )
        )
        assert new[2] <= FLAT, (kwargs, new)
        # At 4N the default chunk (256 images) holds as much as the one-shot copy of N images.
        assert new[1] < old[1] / 3, (kwargs, new, old)


def test_closed_form_sums_from_models_are_flat_in_the_number_of_images(pair):
    a, b, x, _, _ = pair

    def one_shot(n):
        xin = to_input(x[:n], "cpu")
        with torch.no_grad():
            fa, fb = (one_shot_cat(models.split(m, "act1")[0], xin, 64) for m in (a, b))
        return stitching.moments_of(stitching.channels_last_2d(fa), stitching.channels_last_2d(fb))

    old = growth(lambda n: peak_bytes(lambda: one_shot(n)))
    assert old[2] >= GROWS, old
    new = growth(
        lambda n: peak_bytes(
            lambda: stitching.feature_moments(a, b, "act1", x[:n], batch_size=64, device="cpu")
        )
    )
    assert new[2] <= FLAT, new


def test_feature_extraction_needs_the_result_plus_one_chunk(pair):
    a, _, x, fa, _ = pair
    xin = to_input(x, "cpu")

    def result(n):
        return fa[:n].numel() * fa.element_size()

    front = models.split(a, "act1")[0]
    with torch.no_grad():
        old = growth(lambda n: peak_bytes(lambda: one_shot_cat(front, xin[:n], 64)) - result(n))
    assert old[2] >= GROWS, old
    calls = dict(
        features=lambda n: models.features(a, xin[:n], ["act1"], batch_size=64),
        front_features=lambda n: stitching.front_features(
            a, "act1", x[:n], batch_size=64, device="cpu"
        ),
        layer_features=lambda n: layer_features(a, xin[:n], ["act1"], batch_size=64),
    )
    for name, call in calls.items():
        extra = growth(lambda n, call=call: peak_bytes(lambda: call(n)) - result(n))
        assert extra[2] <= FLAT, (name, extra)


def test_sanity_pre_activations_need_the_result_plus_one_chunk():
    model = models.build(MYRTLE_NOBN, seed=0)
    x = images(4 * N, 1)

    def overhead(n):
        # The result is (n, 16, 32, 32) float16.
        return (
            peak_bytes(
                lambda: sanity.pre_activations(model, "conv1", x[:n], batch_size=64, device="cpu")
            )
            - n * 16 * 32 * 32 * 2
        )

    extra = growth(overhead)
    assert extra[2] <= FLAT, extra


@pytest.fixture(scope="module")
def double_features():
    # Features of two float64 Myrtle CNNs with trained-like BatchNorm statistics, n = 60 images (so
    # that chunk sizes 7 and 25 do not divide it), at act1 (every channel fires on these inputs) and
    # act2 (two channels of A never fire, which exercises least squares' rcond).
    torch.manual_seed(0)
    a, b = (models.build(MYRTLE, seed=s).double().eval() for s in (0, 1))
    for m in (a, b):
        for bn in (mm for mm in m.modules() if isinstance(mm, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(60, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    fa, fb = models.features(a, x, ["act1", "act2"]), models.features(b, x, ["act1", "act2"])
    return {layer: (fa[layer], fb[layer]) for layer in fa}


CHUNKS = (1, 7, 25, 60, 1000)


def assert_equal64(got, want):
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_streamed_sums_equal_the_one_shot_sums(double_features, chunk_size):
    fa, fb = double_features["act2"]
    one = stitching.moments_of(stitching.channels_last_2d(fa), stitching.channels_last_2d(fb))
    for a_, b_ in ((fa, fb), (fa.mean((2, 3)), fb.mean((2, 3))), (fa.float(), fb.float())):
        streamed = stitching.streamed_moments(a_, b_, chunk_size)
        want = (
            one
            if a_ is fa
            else stitching.moments_of(
                stitching.channels_last_2d(a_), stitching.channels_last_2d(b_)
            )
        )
        assert streamed["n"] == want["n"] == a_.numel() // a_.shape[1]
        for k in ("sa", "sb", "aa", "ab", "bb"):
            assert streamed[k].dtype == torch.float64
            assert_equal64(streamed[k], want[k])


@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_streamed_matching_and_least_squares_equal_the_one_shot_ones(double_features, chunk_size):
    fa, fb = double_features["act1"]
    assert (fa.amax((0, 2, 3)) > 0).all() and (fb.amax((0, 2, 3)) > 0).all()
    perm, scales = stitching.activation_matching(fa, fb, chunk_size=chunk_size)
    perm1, scales1 = one_shot_matching(fa, fb)
    assert torch.equal(perm, perm1)
    assert_equal64(scales, scales1)
    for fa, fb in double_features.values():
        one = stitching.moments_of(stitching.channels_last_2d(fa), stitching.channels_last_2d(fb))
        streamed = stitching.streamed_moments(fa, fb, chunk_size)
        for rank in (None, 1, 4, fa.shape[1]):
            W, b = stitching.least_squares(streamed, rank)
            W1, b1 = stitching.least_squares(one, rank)
            assert_equal64(W, W1)
            assert_equal64(b, b1)


def test_streamed_matching_with_dead_channels_reaches_the_same_optimum(double_features):
    # Channels of A that never fire correlate 0 with every channel of B: their matches are ties,
    # which the Hungarian algorithm may break either way, but the matched total is the same.
    fa, fb = double_features["act2"]
    assert (fa.amax((0, 2, 3)) == 0).sum() >= 1
    one = stitching.moments_of(stitching.channels_last_2d(fa), stitching.channels_last_2d(fb))
    na, nb = one["aa"].diagonal().clamp_min(1e-24).sqrt(), one["bb"].clamp_min(1e-24).sqrt()
    corr = one["ab"] / na[:, None] / nb[None, :]
    idx = torch.arange(fa.shape[1])
    total = corr[idx, one_shot_matching(fa, fb)[0]].sum()
    for chunk_size in CHUNKS:
        perm = stitching.activation_matching(fa, fb, chunk_size=chunk_size)[0]
        assert sorted(perm.tolist()) == idx.tolist()
        assert_equal64(corr[idx, perm].sum(), total)


def test_streamed_sums_are_not_the_sums_of_other_images(double_features):
    # The equality checks above must be able to fail: sums over a different set of images differ.
    fa, fb = double_features["act2"]
    one = stitching.moments_of(stitching.channels_last_2d(fa), stitching.channels_last_2d(fb))
    fewer = stitching.streamed_moments(fa[1:], fb[1:], 7)
    with pytest.raises(AssertionError):
        assert_equal64(fewer["ab"], one["ab"])


def test_feature_extraction_equals_the_one_shot_copy(pair):
    a, b, x, _, _ = pair
    x, xin = x[:100], to_input(x[:100], "cpu")
    front = models.split(a, "act1")[0]
    for bs in (7, 25, 100, 1000):
        with torch.no_grad():
            want = one_shot_cat(front, xin, bs)
        # Equal values and equal layout (channels_last, as the inputs): later kernels round the
        # same.
        assert want.is_contiguous(memory_format=torch.channels_last) and not want.is_contiguous()
        got = [
            models.features(a, xin, ["act1"], batch_size=bs)["act1"],
            stitching.front_features(a, "act1", x, batch_size=bs, device="cpu")[0],
            stitching.feature_moments(
                a, b, "act1", x, batch_size=bs, device="cpu", front_dtype=torch.float16
            )[1][0],
        ]
        for g, w in zip(got, (want, want, want.half())):
            assert torch.equal(g, w) and g.stride() == w.stride()
        starts = [s for s, _ in models.feature_chunks(a, xin, ["act1"], chunk_size=bs)]
        assert starts == list(range(0, 100, bs))


BAD = [0, -3, 2.5, "64", True, None]


@pytest.mark.parametrize("bad", BAD)
def test_bad_chunk_size_is_a_value_error_naming_it(pair, bad):
    a, b, x, fa, fb = pair
    msg = "chunk_size must be a positive integer \\(images per chunk\\); got "
    with pytest.raises(ValueError, match=msg):
        stitching.streamed_moments(fa[:4], fb[:4], bad)
    with pytest.raises(ValueError, match=msg):
        stitching.activation_matching(fa[:4], fb[:4], chunk_size=bad)
    with pytest.raises(ValueError, match=msg):
        next(models.feature_chunks(a, to_input(x[:4], "cpu"), chunk_size=bad))
    msg = msg.replace("chunk_size", "batch_size")
    with pytest.raises(ValueError, match=msg):
        models.features(a, to_input(x[:4], "cpu"), batch_size=bad)
    with pytest.raises(ValueError, match=msg):
        stitching.front_features(a, "act1", x[:4], batch_size=bad, device="cpu")
    with pytest.raises(ValueError, match=msg):
        stitching.feature_moments(a, b, "act1", x[:4], batch_size=bad, device="cpu")


def test_mismatched_or_empty_inputs_name_the_problem(pair):
    a, _, x, fa, fb = pair
    with pytest.raises(
        ValueError,
        match="same images and positions, got shapes \\(4, 16, 32, 32\\) and \\(5, 16, 32, 32\\)",
    ):
        stitching.streamed_moments(fa[:4], fb[:5])
    with pytest.raises(ValueError, match="hold no images"):
        stitching.streamed_moments(fa[:0], fb[:0])
    with pytest.raises(ValueError, match="x must hold at least one input"):
        models.features(a, to_input(x[:0], "cpu"))
    with pytest.raises(ValueError, match="x holds no images"):
        stitching.front_features(a, "act1", x[:0], device="cpu")


def test_sanity_pre_activations_equal_the_one_shot_copy():
    model = models.build(MYRTLE_NOBN, seed=0)
    x = images(50, 3)
    front = model[:1].eval()
    for bs in (7, 50, 64):
        with torch.no_grad():
            want = torch.cat(
                [front(to_input(x[s : s + bs], "cpu")) for s in range(0, 50, bs)]
            ).half()
        got = sanity.pre_activations(model, "conv1", x, batch_size=bs, device="cpu")
        assert torch.equal(got, want) and got.stride() == want.stride()
    msg = "batch_size must be a positive integer \\(images per chunk\\); got 0"
    with pytest.raises(ValueError, match=msg):
        sanity.pre_activations(model, "conv1", x, batch_size=0, device="cpu")


def test_a_module_that_runs_twice_per_forward_has_no_features():
    # Its outputs would be 2n rows for n inputs (the old torch.cat returned them silently).
    relu = torch.nn.ReLU()
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), relu, torch.nn.Linear(4, 4), relu)
    with pytest.raises(ValueError, match="layer '1' ran 2 times in one forward pass"):
        models.features(model, torch.randn(3, 4), ["1"])
    assert models.features(model, torch.randn(3, 4), ["2"])["2"].shape == (3, 4)

"""alpha and compression_alpha against independent numpy computations."""
import zlib

import numpy as np
import pytest

import cna_tf


def hist_entropy(img, bins, lo, hi):
    """Reference: np.histogram of the scaled values, natural-log entropy, one image at a time."""
    v = (img.astype(np.float64).ravel() - lo) / (hi - lo)
    counts, _ = np.histogram(v, bins=bins, range=(0.0, 1.0))
    p = counts[counts > 0] / v.size
    return float(-(p * np.log(p)).sum())


def exact_integer_entropy(img, bins, lo, hi):
    """Reference for integer pixels: bin edges lo + i*(hi-lo)/bins compared exactly."""
    edges = lo + np.arange(bins + 1) * (hi - lo) / bins
    counts, _ = np.histogram(img.ravel(), bins=edges)
    p = counts[counts > 0] / img.size
    return float(-(p * np.log(p)).sum())


@pytest.mark.parametrize("bins", [1, 10, 100, 1000])
def test_float_images_match_np_histogram(rng, bins):
    x = rng.random((20, 6, 5, 3)).astype(np.float32)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 0.0, 1.0  # the closed last bin includes 1.0
    got = cna_tf.alpha(x, bins=bins, value_range=(0.0, 1.0))
    want = [hist_entropy(img, bins, 0.0, 1.0) for img in x]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bins", [7, 100, 256, 1000])
def test_uint8_images_binned_exactly(rng, bins):
    x = rng.integers(0, 256, size=(30, 8, 8, 3), dtype=np.uint8)
    x[0] = 255
    x[1, :4] = 51  # 51/255 = 0.2 lies exactly on an edge for bins=100
    got = cna_tf.alpha(x, bins=bins)
    want = [exact_integer_entropy(img, bins, 0, 255) for img in x]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_digits_range_and_layouts(rng):
    x = rng.integers(0, 17, size=(12, 8, 8)).astype(np.int64)
    want = [exact_integer_entropy(img, 100, 0, 16) for img in x]
    np.testing.assert_allclose(cna_tf.alpha(x, value_range=(0, 16)), want, atol=1e-12)
    # channels-last, channels-first and flat layouts pool the same values
    np.testing.assert_allclose(cna_tf.alpha(x[..., None], value_range=(0, 16)), want, atol=1e-12)
    np.testing.assert_allclose(cna_tf.alpha(x[:, None], value_range=(0, 16)), want, atol=1e-12)
    np.testing.assert_allclose(cna_tf.alpha(x.reshape(12, -1), value_range=(0, 16)), want,
                               atol=1e-12)


def test_large_batch_threads_and_chunks_agree(rng):
    x = rng.integers(0, 256, size=(700, 32, 32, 3), dtype=np.uint8)
    got = cna_tf.alpha(x)
    idx = [0, 1, 350, 698, 699]
    np.testing.assert_allclose(got[idx], [exact_integer_entropy(x[i], 100, 0, 255) for i in idx],
                               atol=1e-12)


def test_known_values():
    constant = np.full((1, 4, 4), 7, dtype=np.uint8)
    assert cna_tf.alpha(constant)[0] == 0.0
    two = np.zeros((1, 2, 2), dtype=np.uint8)
    two[0, 0] = 255
    assert cna_tf.alpha(two)[0] == pytest.approx(np.log(2))
    uniform = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    assert cna_tf.alpha(uniform, bins=256)[0] == pytest.approx(np.log(256))


def test_published_bins_is_affine_in_alpha(rng):
    """bins=1000 with log2/density is an affine map of alpha with bins=1000 (SPEC §1)."""
    x = rng.integers(0, 256, size=(10, 5, 5), dtype=np.uint8)
    a = cna_tf.alpha(x, bins=1000)
    np.testing.assert_allclose(a / np.log(2), [exact_integer_entropy(i, 1000, 0, 255) / np.log(2)
                                               for i in x])


def test_errors(rng):
    with pytest.raises(ValueError, match="outside the declared value_range"):
        cna_tf.alpha(np.full((2, 3, 3), 17), value_range=(0, 16))
    with pytest.raises(ValueError, match="outside the declared value_range"):
        cna_tf.alpha(rng.normal(size=(2, 4, 4)), value_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="value_range"):
        cna_tf.alpha(rng.random((2, 4, 4)))  # float images must declare their range
    with pytest.raises(ValueError, match="NaN or inf"):
        x = rng.random((2, 4, 4))
        x[1, 0, 0] = np.nan
        cna_tf.alpha(x, value_range=(0, 1))
    with pytest.raises(ValueError, match="shape"):
        cna_tf.alpha(np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError, match="low < high"):
        cna_tf.alpha(np.zeros((2, 3), dtype=np.uint8), value_range=(1, 1))
    with pytest.raises(ValueError, match="bins"):
        cna_tf.alpha(np.zeros((2, 3), dtype=np.uint8), bins=0)


def test_compression_alpha(rng):
    x = rng.integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    x[0] = 0
    want = [len(zlib.compress(img.tobytes(), 9)) / img.size for img in x]
    np.testing.assert_allclose(cna_tf.compression_alpha(x), want)
    assert cna_tf.compression_alpha(x)[0] < cna_tf.compression_alpha(x)[1]
    f = x.astype(np.float32) / 255.0
    np.testing.assert_allclose(cna_tf.compression_alpha(f, value_range=(0, 1)), want)


def test_entropy_table_matches_scipy(rng):
    from scipy.stats import entropy

    from cna_tf.complexity import _entropy_of_counts

    counts = rng.multinomial(300, np.full(7, 1 / 7), size=50)
    counts[:5] = 0
    counts[:5, 0] = 300  # one bin only: entropy 0
    np.testing.assert_allclose(_entropy_of_counts(counts), entropy(counts, axis=1), atol=1e-12)
    np.testing.assert_allclose(_entropy_of_counts(np.array([[1, 0]])), [0.0])


def test_check_images_accepts_what_alpha_accepts(rng):
    from cna_tf.complexity import check_images

    b = rng.random((4, 5, 5)) > 0.5  # bool images: alpha defaults their range to (0, 1)
    assert check_images(b) == (0.0, 1.0)
    assert cna_tf.alpha(b).shape == (4,)
    assert check_images(rng.integers(0, 256, (3, 4, 4), dtype=np.uint8)) == (0.0, 255.0)
    with pytest.raises(ValueError, match="outside the declared value_range"):
        check_images(np.full((2, 3, 3), 17.0), value_range=(0, 16))

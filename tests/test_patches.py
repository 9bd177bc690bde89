"""Natural-image patches: sources, the draw, UFLDL normalisation, ZCA and whitening."""

import threading

import numpy as np
import pytest
import scipy.io
import torch
from skimage import io

from hvdl.data.chunks import Piece
from hvdl.data.formats import patches as P


def simulated_ranks(work, shards):
    """Run work(shard, reduce_sum) on one thread per shard; reduce_sum adds over the threads."""
    barrier, slots, results = threading.Barrier(len(shards)), [None] * len(shards), {}

    def rank(r):
        def reduce_sum(t):
            slots[r] = t.clone()
            barrier.wait()
            total = sum(slots)
            barrier.wait()
            return total
        results[r] = work(shards[r], reduce_sum)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(len(shards))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [results[r] for r in range(len(shards))]


def heavy_tailed(n=300, dim=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)) ** 3


def write_mat(path, images):
    scipy.io.savemat(path, {"IMAGES": images})
    return path


def test_positions_are_in_bounds_distinct_and_reproducible():
    """Test that the draw gives in-bounds positions, none twice, the same for the same seed."""
    shapes = [(20, 30), (12, 12), (40, 9)]
    d = P.draw_positions(shapes, 300, 8, seed=7)
    assert d.shape == (300, 3)
    heights = np.array([shapes[i][0] for i in d[:, 0]])
    widths = np.array([shapes[i][1] for i in d[:, 0]])
    assert np.all(d[:, 1] + 8 <= heights) and np.all(d[:, 2] + 8 <= widths) and np.all(d >= 0)
    assert len({tuple(row) for row in d}) == 300
    assert np.array_equal(d, P.draw_positions(shapes, 300, 8, seed=7))
    assert not np.array_equal(d, P.draw_positions(shapes, 300, 8, seed=8))


def test_too_many_patches_for_the_images_is_an_error():
    """Test that asking for more patches than positions raises PatchSourceError."""
    with pytest.raises(P.PatchSourceError, match="more positions"):
        P.draw_positions([(9, 9)], 5, 8, seed=0)


def test_cut_patches_flattens_row_by_row():
    """Test that a patch is the image block at (top, left), flattened row by row."""
    image = np.arange(100.0).reshape(10, 10)
    (patch,) = P.cut_patches([image], np.array([[0, 2, 3]]), 2)
    assert patch.tolist() == [23.0, 24.0, 33.0, 34.0]


def test_normalisation_is_ufldl_s():
    """Test per-patch mean removal, clipping at 3σ (all pixels) and [−1, 1] → [0.1, 0.9]."""
    p = heavy_tailed()
    out = P.normalize_patches(p)
    assert out.shape == p.shape
    assert out.min() == pytest.approx(0.1) and out.max() == pytest.approx(0.9)
    centred = p - p.mean(1, keepdims=True)
    bound = 3 * centred.std(ddof=1)
    expected = (np.clip(centred, -bound, bound) / bound + 1) * 0.4 + 0.1
    np.testing.assert_allclose(out, expected, atol=1e-12)


def test_normalisation_over_simulated_ranks_equals_one_process():
    """Test that σ (and with it the clipping) is global when sums go through reduce_sum."""
    p = heavy_tailed(n=101)
    whole = P.normalize_patches(p)
    shards = [p[:30], p[30:]]
    parts = simulated_ranks(lambda s, reduce: P.normalize_patches(s, reduce_sum=reduce), shards)
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-12)
    alone = P.normalize_patches(p[:30])  # a rank's own σ clips differently
    assert np.abs(alone - whole[:30]).max() > 1e-3


def test_zca_whitening_decorrelates_and_is_global():
    """Test that ZCA with tiny ε gives identity covariance, the same over simulated ranks."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 5)) @ rng.standard_normal((5, 5))
    white = P.zca_whiten(x, 1e-9)
    np.testing.assert_allclose(np.cov(white.T, bias=True), np.eye(5), atol=1e-6)
    parts = simulated_ranks(lambda s, reduce: P.zca_whiten(s, 0.1, reduce), [x[:150], x[150:]])
    np.testing.assert_allclose(np.concatenate(parts), P.zca_whiten(x, 0.1), atol=1e-10)
    out = P.normalize_patches(heavy_tailed(), zca_epsilon=0.1)
    assert 0.1 - 1e-12 <= out.min() and out.max() <= 0.9 + 1e-12


def test_whitening_flattens_a_one_over_f_spectrum():
    """Test that R(f) = f·exp(−(f/f0)^4) turns 1/f amplitude noise into a flat mid band."""
    rng = np.random.default_rng(2)
    fy, fx = np.fft.fftfreq(256)[:, None], np.fft.fftfreq(256)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    pink = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((256, 256))) / np.maximum(f, 1e-3)))
    white = P.whiten_image(pink)
    assert white.var() == pytest.approx(0.1)

    def band(image, lo, hi):
        power = np.abs(np.fft.fft2(image)) ** 2
        return power[(f >= lo) & (f < hi)].mean()

    before = band(pink, 0.02, 0.04) / band(pink, 0.16, 0.2)
    after = band(white, 0.02, 0.04) / band(white, 0.16, 0.2)
    assert before > 20 and 0.5 < after < 2


def test_mat_file_source(tmp_path):
    """Test that a .mat file's IMAGES (H, W, n) gives normalised patches of the right shape."""
    images = np.random.default_rng(3).standard_normal((20, 24, 3))
    path = write_mat(tmp_path / "IMAGES.mat", images)
    loaded = P.load_images(str(path), 8)
    assert len(loaded) == 3 and loaded[1].shape == (20, 24)
    np.testing.assert_array_equal(loaded[2], images[:, :, 2])
    source = P.PatchSource(str(path), count=50, size=8, seed=1)
    pieces = [Piece(0, 25, 50)]  # the second half, as rank 1 of 2 holds it
    source.prepare(pieces, reduce_sum=lambda t: t)
    x, y = source.read(pieces[0])
    assert x.shape == (25, 64) and y is None
    assert 0.1 - 1e-6 <= x.min() and x.max() <= 0.9 + 1e-6
    np.testing.assert_array_equal(x, source.read(pieces[0])[0])


@pytest.mark.parametrize("contents, message", [
    ({"pictures": np.zeros((20, 20, 2))}, "no IMAGES array \\(found pictures\\)"),
    ({"IMAGES": np.zeros((20, 20))}, "IMAGES has shape \\(20, 20\\); expected 3-d"),
    ({"IMAGES": np.zeros((20, 6, 2))}, "H and W >= the patch size 8"),
])
def test_bad_mat_files_are_named_in_one_line(tmp_path, contents, message):
    """Test that a .mat without IMAGES or with a wrong shape raises PatchSourceError naming it."""
    path = tmp_path / "bad.mat"
    scipy.io.savemat(path, contents)
    with pytest.raises(P.PatchSourceError, match=message) as err:
        P.load_images(str(path), 8)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_unreadable_or_missing_sources_are_errors(tmp_path):
    """Test that a corrupt .mat, a missing path and an empty folder raise PatchSourceError."""
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(P.PatchSourceError, match="junk.mat"):
        P.load_images(str(junk), 8)
    with pytest.raises(P.PatchSourceError, match="not found"):
        P.load_images(str(tmp_path / "nowhere"), 8)
    with pytest.raises(P.PatchSourceError, match="no PNG or JPEG"):
        P.load_images(str(tmp_path), 8)


def test_folder_of_images_source(tmp_path):
    """Test that a folder's PNG and JPEG images (RGB or gray) are loaded gray and whitened."""
    rng = np.random.default_rng(4)
    io.imsave(tmp_path / "a.png", rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    io.imsave(tmp_path / "b.jpg", rng.integers(0, 255, (30, 30), dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("ignored")
    images = P.load_images(str(tmp_path), 8)
    assert [im.shape for im in images] == [(40, 50), (30, 30)]
    assert images[0].var() == pytest.approx(0.1)


def test_skimage_photographs_source():
    """Test that the bundled scikit-image photographs load as ten whitened gray images."""
    images = P.load_images("skimage", 8)
    assert len(images) == 10
    assert all(im.ndim == 2 and im.var() == pytest.approx(0.1) for im in images)
    positions = P.draw_positions([im.shape for im in images], 200, 8, seed=0)
    x = P.normalize_patches(P.cut_patches(images, positions, 8))
    assert x.shape == (200, 64)
    assert x.min() == pytest.approx(0.1) and x.max() == pytest.approx(0.9)


def test_float64_reduce_inputs():
    """Test that the statistics sent to reduce_sum are float64 (exact sums across ranks)."""
    seen = []
    P.normalize_patches(heavy_tailed(n=20), reduce_sum=lambda t: seen.append(t.dtype) or t)
    assert seen and all(dtype == torch.float64 for dtype in seen)

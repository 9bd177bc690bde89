"""Random patches of natural images, normalised as in UFLDL's sampleIMAGES, as a dataset.

    python -m hvdl.train --model sae_patches                                   # skimage photos
    python -m hvdl.train --model sae_patches --patches.source ~/photos         # PNG/JPEG folder
    python -m hvdl.train --model sae_patches --patches.source IMAGES.mat       # UFLDL's images

Sources (`config.patches.source`):
- "skimage": ten natural photographs bundled with scikit-image (camera, astronaut, coffee,
  chelsea, rocket, coins, moon, grass, gravel, brick), in grayscale, whitened like the UFLDL
  images (below).
- a folder of PNG/JPEG images: converted to grayscale and whitened the same way.
- a MATLAB `.mat` file holding `IMAGES` of shape (H, W, n), like UFLDL's IMAGES.mat, whose images
  are already whitened and are used as they are.

Whitening (B. Olshausen & D. Field, "Emergence of simple-cell receptive field properties by
learning a sparse code for natural images", Nature 1996, the preparation of IMAGES.mat): each
image is filtered in frequency space by R(f) = f·exp(−(f/f0)^4) with f0 = 0.4 cycles/pixel, which
flattens the 1/f amplitude spectrum of natural images (so edges, not brightness gradients,
dominate) and cuts the highest frequencies; then it is scaled to variance 0.1. The image is
mirror-padded before the FFT so that the wrap-around edge does not ring.

The `count` patch positions are drawn from the seed without replacement, numbered over all
images; `PatchSource` makes them a dataset whose rows the chunk rule deals to the ranks
(hvdl/data/chunks.py), so each rank cuts only its own patches. Normalisation (UFLDL): subtract
each patch's own mean; clip to ±3σ, σ the standard deviation of all pixels of all patches on all
ranks (the sums go through `reduce_sum`, so N ranks give what one process gives on the same
patches);
rescale [−1, 1] → [0.1, 0.9], inside the range of the sigmoid decoder. With ZCA whitening, it is
applied after mean removal (to pixels divided by σ, so ε is relative to unit variance, with the
covariance summed over all ranks), and the clip and rescale follow it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hvdl.data.chunks import Piece
from hvdl.data.formats.base import DataError, Source

Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums a tensor over ranks

SKIMAGE_PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon", "grass",
                  "gravel", "brick")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
F0 = 0.4  # cut-off of the whitening filter, cycles/pixel (Olshausen & Field: 0.4 N per picture)


class PatchSourceError(DataError):
    """An image source that cannot give patches; the one-line message names the file."""


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def whiten_image(image: np.ndarray, f0: float = F0) -> np.ndarray:
    """Filter by R(f) = f·exp(−(f/f0)^4) in frequency space; scale to variance 0.1."""
    pad = min(image.shape) // 4
    padded = np.pad(image - image.mean(), pad, mode="symmetric")  # (H + 2p, W + 2p)
    fy = np.fft.fftfreq(padded.shape[0])[:, None]  # cycles/pixel
    fx = np.fft.fftfreq(padded.shape[1])[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    filtered = np.real(np.fft.ifft2(np.fft.fft2(padded) * f * np.exp(-(f / f0) ** 4)))
    out = filtered[pad:pad + image.shape[0], pad:pad + image.shape[1]]  # (H, W)
    return out * np.sqrt(0.1) / out.std()


def grayscale(image: np.ndarray) -> np.ndarray:
    """An (H, W) float64 image in [0, 1] from a gray, RGB or RGBA one."""
    from skimage import color, util

    image = util.img_as_float64(image)
    if image.ndim == 3:
        image = color.rgb2gray(image[..., :3])
    return image


def skimage_images() -> list[np.ndarray]:
    import skimage.data

    return [whiten_image(grayscale(getattr(skimage.data, name)())) for name in SKIMAGE_PHOTOS]


def folder_images(folder: Path) -> list[np.ndarray]:
    from skimage import io

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PatchSourceError(f"{folder}: no PNG or JPEG images in this folder")
    return [whiten_image(grayscale(io.imread(p))) for p in files]


def mat_images(path: Path, size: int) -> list[np.ndarray]:
    """The n images of the `IMAGES` (H, W, n) array in a MATLAB file, as UFLDL's IMAGES.mat."""
    import scipy.io

    try:
        contents = scipy.io.loadmat(path)
    except (ValueError, NotImplementedError, OSError) as err:
        raise PatchSourceError(f"{path}: not a MATLAB v5 .mat file scipy can read ({err})") \
            from None
    if "IMAGES" not in contents:
        found = ", ".join(k for k in contents if not k.startswith("__")) or "nothing"
        raise PatchSourceError(f"{path}: no IMAGES array (found {found}); expected IMAGES of "
                               "shape (H, W, n) like UFLDL's IMAGES.mat")
    images = np.asarray(contents["IMAGES"], dtype=np.float64)
    if images.ndim != 3 or min(images.shape[:2]) < size:
        raise PatchSourceError(f"{path}: IMAGES has shape {images.shape}; expected 3-d (H, W, n) "
                               f"with H and W >= the patch size {size}")
    return [images[:, :, i] for i in range(images.shape[2])]


def load_images(source: str, size: int) -> list[np.ndarray]:
    """The (H, W) float64 images of `source`: "skimage", a folder, or a .mat file."""
    if source == "skimage":
        images = skimage_images()
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            images = folder_images(path)
        elif path.is_file() and path.suffix.lower() == ".mat":
            images = mat_images(path, size)
        else:
            raise PatchSourceError(f"{source}: not found or not a patch source; use \"skimage\", "
                                   "a folder of PNG/JPEG images or a .mat file holding IMAGES")
    small = [i for i, image in enumerate(images) if min(image.shape) < size]
    if small:
        raise PatchSourceError(f"{source}: image {small[0]} is {images[small[0]].shape}, "
                               f"smaller than the patch size {size}")
    return images


def draw_positions(shapes: list[tuple[int, int]], count: int, size: int, *,
                   seed: int) -> np.ndarray:
    """(count, 3) rows (image, top, left) of the patches, drawn without replacement from `seed`.

    Positions are numbered over all images; every rank draws the same list, and the chunk rule
    (hvdl/data/chunks.py) deals its rows to the ranks like any dataset's.
    """
    per_image = np.array([(h - size + 1) * (w - size + 1) for h, w in shapes])
    if count > int(per_image.sum()):
        raise PatchSourceError(f"{count} patches of {size}×{size} need more positions than the "
                               f"images hold ({int(per_image.sum())})")
    flat = np.random.default_rng([seed, 0x9A7C]).choice(int(per_image.sum()), size=count,
                                                        replace=False)
    image = np.searchsorted(np.cumsum(per_image), flat, side="right")
    offset = flat - np.concatenate([[0], np.cumsum(per_image)])[image]
    widths = np.array([w - size + 1 for _, w in shapes])[image]
    return np.stack([image, offset // widths, offset % widths], axis=1)


def cut_patches(images: list[np.ndarray], positions: np.ndarray, size: int) -> np.ndarray:
    """(k, size²) patches, each flattened row by row."""
    if len(positions) == 0:
        return np.empty((0, size * size))
    return np.stack([images[i][t:t + size, s:s + size].reshape(-1) for i, t, s in positions])


def global_std(p: np.ndarray, reduce_sum: Reduce) -> float:
    """Standard deviation (n − 1 normalised) of all pixels of all ranks' patches."""
    total = reduce_sum(torch.tensor([p.sum(), (p ** 2).sum(), p.size], dtype=torch.float64))
    s, s2, n = (float(v) for v in total)
    return float(np.sqrt((s2 - s * s / n) / (n - 1)))


@dataclass(frozen=True)
class ZCA:
    """x_ZCA = (x − μ) U diag(1/sqrt(S + ε)) Uᵀ, U S Uᵀ the covariance over all ranks."""

    mean: np.ndarray  # (n,)
    matrix: np.ndarray  # (n, n)

    @classmethod
    def fit(cls, p: np.ndarray, epsilon: float, reduce_sum: Reduce = _identity) -> ZCA:
        x = torch.as_tensor(p, dtype=torch.float64)  # (k, n)
        stats = reduce_sum(torch.cat([x.sum(0), (x.T @ x).reshape(-1), x.new_tensor([len(x)])]))
        n = x.shape[1]
        m = stats[-1]
        mean = stats[:n] / m  # (n,)
        sigma = stats[n:-1].reshape(n, n) / m - torch.outer(mean, mean)  # (n, n)
        s, u = torch.linalg.eigh(sigma)
        zca = u @ torch.diag(1.0 / torch.sqrt(s.clamp(min=0) + epsilon)) @ u.T  # (n, n)
        return cls(mean.numpy(), zca.numpy())

    def apply(self, p: np.ndarray) -> np.ndarray:
        return (p - self.mean) @ self.matrix


def zca_whiten(p: np.ndarray, epsilon: float, reduce_sum: Reduce = _identity) -> np.ndarray:
    """`p` ZCA-whitened with the covariance of every rank's patches."""
    return ZCA.fit(p, epsilon, reduce_sum).apply(p)


@dataclass(frozen=True)
class Normalization:
    """UFLDL's normalisation of mean-removed patches, its statistics taken over all ranks."""

    bound: float  # 3σ of the (whitened) pixels: clipped to ±bound, then mapped to [0.1, 0.9]
    sigma: float = 1.0  # σ of the mean-removed pixels, dividing them before ZCA
    zca: ZCA | None = None

    @classmethod
    def fit(cls, p: np.ndarray, *, zca_epsilon: float | None = None,
            reduce_sum: Reduce = _identity) -> Normalization:
        """The statistics of this rank's mean-removed patches `p` and every other rank's."""
        if zca_epsilon is None:
            return cls(bound=3 * global_std(p, reduce_sum))
        sigma = global_std(p, reduce_sum)
        zca = ZCA.fit(p / sigma, zca_epsilon, reduce_sum)
        return cls(bound=3 * global_std(zca.apply(p / sigma), reduce_sum), sigma=sigma, zca=zca)

    def apply(self, p: np.ndarray) -> np.ndarray:
        if self.zca is not None:
            p = self.zca.apply(p / self.sigma)
        return (np.clip(p, -self.bound, self.bound) / self.bound + 1) * 0.4 + 0.1


def remove_means(p: np.ndarray) -> np.ndarray:
    return p - p.mean(axis=1, keepdims=True)  # (k, n) each patch's own mean removed


def normalize_patches(p: np.ndarray, *, zca_epsilon: float | None = None,
                      reduce_sum: Reduce = _identity) -> np.ndarray:
    """UFLDL's normalisation to [0.1, 0.9], with optional ZCA whitening (see the docstring)."""
    p = remove_means(p)
    return Normalization.fit(p, zca_epsilon=zca_epsilon, reduce_sum=reduce_sum).apply(p)


class PatchSource(Source):
    """`count` patches of `size`×`size` as a dataset: row i is the i-th drawn patch.

    `prepare` (a collective) fits the normalisation over every rank's pieces, training and
    test together, before any row is read.
    """

    format = "patches"
    dtype = np.dtype(np.float64)

    def __init__(self, source: str, *, count: int, size: int, seed: int,
                 zca_epsilon: float | None = None) -> None:
        self.images = load_images(source, size)
        self.positions = draw_positions([im.shape for im in self.images], count, size,
                                        seed=seed)
        self.files, self.file_rows = [Path(source)], [count]
        self.size, self.shape, self.zca_epsilon = size, (size * size,), zca_epsilon
        self.norm: Normalization | None = None

    def prepare(self, pieces: list[Piece], reduce_sum: Reduce) -> None:
        raw = [remove_means(cut_patches(self.images, self.positions[p.start:p.stop], self.size))
               for p in pieces]
        mine = np.concatenate(raw) if raw else np.zeros((0, self.features))
        self.norm = Normalization.fit(mine, zca_epsilon=self.zca_epsilon, reduce_sum=reduce_sum)

    def read(self, piece: Piece) -> tuple[np.ndarray, None]:
        p = remove_means(cut_patches(self.images, self.positions[piece.start:piece.stop],
                                     self.size))
        return self.norm.apply(p), None

    def position(self, piece: Piece, row: int) -> str:
        return f"patch {piece.start + row} of {self.files[0]}"

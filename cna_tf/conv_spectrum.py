"""The spectral norm of a convolution, not of its reshaped kernel (Sedghi, Gupta & Long, ICLR
2019, "The Singular Values of Convolutional Layers"; SPEC §12).

A stride-1 convolution with c_in input and c_out output channels acting circularly on an
n_1 × … × n_D input is block-circulant; the D-dimensional DFT over the spatial axes
block-diagonalizes it into one c_in × c_out matrix per frequency,

    K̂(f) = Σ_a K[a] · exp(−2πi Σ_j a_j f_j / n_j),

and its singular values are those of all K̂(f) together: ‖conv‖₂ = max_f σ_max(K̂(f)).

Choices (documented once):

* **Input size** n: the layer's own input size (SPEC §12), where Dziugaite et al.'s code uses
  the image size for every layer.
* **A kernel larger than the input** (a 3×3 kernel on a 2×2 or 1×1 feature map deep in a VGG):
  a circular convolution wraps its taps around, so tap a acts at a mod n; the taps are summed
  modulo n before the DFT. (``np.fft.fft2(kernel, (n, n))``, which Sedghi et al.'s and
  Dziugaite's code call, crops such a kernel to n×n instead.)
* **Dilation** d puts tap a at position a·d, then the same.
* Exact for a stride-1 circular convolution; for "same"/"valid" zero padding and for strides it
  is the norm of that circular operator, an approximation (a bound up to boundary effects).
* A real kernel's DFT is conjugate-symmetric, so only the ``rfftn`` half of the frequencies is
  needed; the per-frequency largest singular value comes from the largest eigenvalue of the
  smaller Gram matrix K̂ᴴK̂ or K̂K̂ᴴ (``numpy.linalg.eigvalsh``, batched).
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np

__all__ = ["conv_spectral_norm"]


def _wrapped(kernel: np.ndarray, size: Sequence[int], dilation: Sequence[int]) -> np.ndarray:
    """The kernel's taps summed onto an n_1 × … × n_D grid at (a·d) mod n."""
    spatial = kernel.shape[:-2]
    if all(k <= n for k, n in zip(spatial, size)) and all(d == 1 for d in dilation):
        return kernel  # rfftn zero-pads it
    out = np.zeros(tuple(size) + kernel.shape[-2:], dtype=kernel.dtype)
    for a in np.ndindex(*spatial):
        pos = tuple((ai * di) % n for ai, di, n in zip(a, dilation, size))
        out[pos] += kernel[a]
    return out


def conv_spectral_norm(kernel: np.ndarray, input_size: Sequence[int],
                       dilation: Union[int, Sequence[int]] = 1) -> float:
    """‖conv‖₂ of the circular convolution with ``kernel`` on an input of ``input_size``.

    Args:
        kernel: (k_1, …, k_D, c_in, c_out), the Keras layout of an ordinary ConvND kernel (a
            grouped or depthwise kernel as its equivalent full kernel; a transposed conv's
            (k…, out, in) kernel as it is: its operator is the adjoint, with the same norm).
        input_size: (n_1, …, n_D), the spatial size of the layer's input.
        dilation: the layer's dilation rate (one int or one per axis).

    Returns:
        The largest singular value over all frequencies (float64; NaN/inf propagate).

    Raises:
        ValueError: a kernel with fewer than 3 axes, or an input size that does not match its
            spatial axes or is not positive.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim < 3:
        raise ValueError(f"conv_spectral_norm needs a (k..., c_in, c_out) kernel, got shape "
                         f"{kernel.shape}")
    size = tuple(int(n) for n in input_size)
    d = kernel.ndim - 2
    if len(size) != d or min(size) < 1:
        raise ValueError(f"input_size {tuple(input_size)} must give {d} positive spatial sizes "
                         f"for a kernel of shape {kernel.shape}")
    dil = (int(dilation),) * d if np.ndim(dilation) == 0 else tuple(int(v) for v in dilation)
    if not np.all(np.isfinite(kernel)):
        return math.nan if np.any(np.isnan(kernel)) else math.inf
    top = float(np.max(np.abs(kernel))) if kernel.size else 0.0
    if top == 0.0:
        return 0.0
    grid = _wrapped(kernel / top, size, dil)
    spectrum = np.fft.rfftn(grid, s=size, axes=tuple(range(d)))  # (n…, c_in, c_out)
    mats = spectrum.reshape(-1, *kernel.shape[-2:])
    if mats.shape[1] <= mats.shape[2]:
        gram = mats @ np.conj(np.swapaxes(mats, 1, 2))
    else:
        gram = np.conj(np.swapaxes(mats, 1, 2)) @ mats
    largest = float(np.max(np.linalg.eigvalsh(gram)[:, -1]))
    return top * math.sqrt(max(largest, 0.0))

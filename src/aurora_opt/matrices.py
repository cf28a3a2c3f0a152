"""How a parameter is seen as a batch of matrices, and the orientations the algorithms work in.

Every spectral rule acts on matrices ``[B, m, n]``: a 2-D parameter is one m×n matrix, a 3-D one a
stack of B matrices (batched or expert weights), and a 4-D or larger one (a convolution kernel) one
(out, in·kh·kw) matrix. Aurora's balancing works on the tall orientation (m ≥ n: rows are the
neurons whose shares it equalizes); the polar iterations on the wide one (the smaller Gram matrix).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

#: smallest positive value used where a norm, a trace or a leverage score is divided by (fp32-safe)
TINY = 1e-30


def matrix_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """``(B, m, n)`` of the matrix batch a parameter of this shape is trained as."""
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    if len(shape) == 3:
        return shape[0], shape[1], shape[2]
    return 1, shape[0], math.prod(shape[1:])


def as_matrices(t: Tensor) -> Tensor:
    """View a parameter-shaped tensor as its batch of matrices ``[B, m, n]`` (see :func:`matrix_shape`)."""
    return t.reshape(matrix_shape(t.shape))


def tall(M: Tensor) -> tuple[Tensor, bool]:
    """M [..., m, n] as a tall-or-square matrix batch, and whether it was transposed."""
    if M.size(-2) < M.size(-1):
        return M.mT, True
    return M, False


def wide(G: Tensor) -> tuple[Tensor, bool]:
    """G [..., m, n] as a wide-or-square matrix batch (the Gram matrix X Xᵀ is then the smaller
    one), and whether it was transposed."""
    if G.size(-2) > G.size(-1):
        return G.mT, True
    return G, False


def row_norms(X: Tensor) -> Tensor:
    """‖X_i‖ of every row of X [..., m, n]: ``[..., m, 1]``.

    As the root of a sum of squares: the tall view Mᵀ of a wide M has its rows strided, and there
    ``X.norm(dim=-1)`` took 825 µs against 56 µs (1024×256 view, one CPU thread; 30 against 39 µs on
    contiguous rows).
    """
    return X.square().sum(dim=-1, keepdim=True).sqrt()


#: from this many columns on, :func:`gram` computes three of XᵀX's four blocks on the CPU (one thread,
#: fp32: 0.28 against 0.32 ms at 768×192, 0.62 against 0.76 ms at 1024×256, 15.6 against 18.7 ms at
#: 3072×768; below, the extra operations cost more: 0.11 against 0.09 ms at 512×128). Elsewhere one
#: product: on a GPU three smaller kernels have not been timed against one.
BLOCKED_GRAM_MIN_COLUMNS = 192


def gram(X: Tensor) -> Tensor:
    """XᵀX [..., n, n] of X [..., m, n].

    On the CPU from BLOCKED_GRAM_MIN_COLUMNS columns on, with X = [X₁ X₂] split in halves, from X₁ᵀX₁,
    X₂ᵀX₁ and X₂ᵀX₂, the fourth block the transpose of the second: 3/4 of the flops of one product
    (torch has no symmetric rank-k update).
    """
    n = X.size(-1)
    if n < BLOCKED_GRAM_MIN_COLUMNS or X.device.type != "cpu":
        return X.mT @ X
    half = n // 2
    left, right = X[..., :half], X[..., half:]
    C = X.new_empty(*X.shape[:-2], n, n)
    C[..., :half, :half] = left.mT @ left
    lower = right.mT @ left
    C[..., half:, :half] = lower
    C[..., :half, half:] = lower.mT
    C[..., half:, half:] = right.mT @ right
    return C


def all_finite(t: Tensor, dim: tuple[int, ...] = (), keepdim: bool = False) -> Tensor:
    """Whether every entry of ``t`` (over the dimensions ``dim``; ``()``: all) is finite, as a bool tensor.

    NaN propagates through max and min and ±inf shows as one of them, so two reductions decide it;
    on the CPU they cost about 1/15 of the elementwise ``isfinite(t).all()``.
    """
    if t.numel() == 0:  # max and min of nothing are undefined
        return torch.ones((), dtype=torch.bool, device=t.device) if not dim else torch.isfinite(t).all(dim, keepdim)
    return torch.isfinite(t.amax(dim, keepdim)) & torch.isfinite(t.amin(dim, keepdim))


def matmul_fp32(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for bf16 or fp16 batches a [B, p, q] and b [B, q, r], accumulated and returned in fp32.

    On CUDA one tensor-core kernel (``torch.bmm``'s ``out_dtype``; on the meta device the same call
    propagates shapes and dtypes); elsewhere the same arithmetic on fp32 copies (a product of two bf16
    or fp16 numbers is exact in fp32). Unlike ``a @ b``, whose result is rounded to a's dtype, the
    result keeps fp32 precision: a Gram matrix rounded to bf16 loses its smallest eigenvalues.
    """
    if a.device.type in ("cuda", "meta"):
        return torch.bmm(a, b, torch.float32)
    return a.float() @ b.float()

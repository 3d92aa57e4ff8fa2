import numpy as np
import pytest
import scipy.sparse.linalg as spla
from hypothesis import assume, given
from hypothesis import strategies as st

from mlr_dask import FormatError, Hierarchy, InputError, MLRMatrix

from strategies import bounds_from_leaf_sizes, dense_reference, mlr_matrices, tree_shape


@given(mlr_matrices(), st.integers(0, 2**32 - 1))
def test_products_match_dense(A, seed):
    rng = np.random.default_rng(seed)
    D = dense_reference(A)
    m, n = A.shape
    x, y = rng.standard_normal(n), rng.standard_normal(m)
    X = rng.standard_normal((n, 3))
    tol = 1e-10 * (1 + np.abs(D).sum())
    assert isinstance(A, spla.LinearOperator)
    assert np.allclose(A @ x, D @ x, atol=tol)
    assert np.allclose(A.matvec(x), D @ x, atol=tol)
    assert np.allclose(A.T @ y, D.T @ y, atol=tol)
    assert np.allclose(A.rmatvec(y), D.T @ y, atol=tol)
    assert np.allclose(A.matmat(X), D @ X, atol=tol)
    assert np.allclose(A @ X, D @ X, atol=tol)
    assert np.allclose(A.to_dense(), D, atol=tol)
    assert A.storage == (m + n) * sum(A.ranks)
    if m == n:
        assert np.allclose(A.diagonal(), np.diag(D), atol=tol)


@given(mlr_matrices(symmetric=True))
def test_symmetric(A):
    D = dense_reference(A)
    assert A.symmetric and A.T is A
    assert np.allclose(D, D.T)
    assert np.linalg.eigvalsh(D).min() > -1e-9 * (1 + np.abs(D).max())
    assert A.storage == A.shape[0] * sum(A.ranks)


@st.composite
def invertible_pairs(draw, tall: bool):
    """Square (or tall) MLR matrices whose finest level has full column rank per block."""
    n_levels = draw(st.integers(1, 3))
    shape = tree_shape(draw, n_levels)
    n_leaves = sum(shape[-1]) if shape else 1
    cs = np.array(draw(st.lists(st.integers(1, 3), min_size=n_leaves, max_size=n_leaves)))
    extra = draw(st.lists(st.integers(0, 3), min_size=n_leaves, max_size=n_leaves))
    rs = cs + np.array(extra) if tall else cs
    rb, cb = bounds_from_leaf_sizes(shape, rs), bounds_from_leaf_sizes(shape, cs)
    m, n = int(rb[0][-1]), int(cb[0][-1])
    rows = Hierarchy.from_boundaries(rb, np.array(draw(st.permutations(range(m)))))
    cols = Hierarchy.from_boundaries(cb, np.array(draw(st.permutations(range(n)))))
    ranks = draw(st.lists(st.integers(0, 2), min_size=n_levels - 1, max_size=n_levels - 1))
    ranks.append(int(cs.max()))
    return MLRMatrix.random(rows, cols, ranks, rng=draw(st.integers(0, 2**32 - 1)))


@given(invertible_pairs(tall=False), st.integers(0, 100))
def test_solve_matches_dense(A, seed):
    D = dense_reference(A)
    assume(np.linalg.cond(D) < 1e7)
    b = np.random.default_rng(seed).standard_normal((A.shape[0], 2))
    x = A.solve(b)
    ref = np.linalg.solve(D, b)
    assert np.allclose(x, ref, atol=1e-7 * (1 + np.abs(ref).max()))
    assert np.allclose(A.solve(b[:, 0]), ref[:, 0], atol=1e-7 * (1 + np.abs(ref).max()))


@given(invertible_pairs(tall=True), st.integers(0, 100))
def test_lstsq_matches_dense(A, seed):
    D = dense_reference(A)
    assume(np.linalg.cond(D) < 1e6)
    b = np.random.default_rng(seed).standard_normal(A.shape[0])
    x = A.lstsq(b)
    ref = np.linalg.lstsq(D, b, rcond=None)[0]
    assert np.allclose(x, ref, atol=1e-7 * (1 + np.abs(ref).max()))


def test_singular_solve_raises():
    h = Hierarchy.dyadic(8, 2)
    A = MLRMatrix.random(h, h, [1, 1], rng=0)  # rank <= 3 < 8
    with pytest.raises(np.linalg.LinAlgError, match="singular"):
        A.solve(np.ones(8))
    with pytest.raises(InputError, match="square"):
        MLRMatrix.random(Hierarchy.dyadic(8, 2), Hierarchy.dyadic(6, 2), [1, 1], rng=0).solve(
            np.ones(8)
        )


@given(st.booleans().flatmap(lambda sym: mlr_matrices(symmetric=sym)))
def test_save_load_round_trip(tmp_path_factory, A):
    path = tmp_path_factory.mktemp("mlr") / "A.zarr"
    A.save(path)
    B = MLRMatrix.load(path)
    assert B.ranks == A.ranks and B.symmetric == A.symmetric
    assert B.rows == A.rows and B.cols == A.cols
    assert np.array_equal(B.B, A.B) and np.array_equal(B.C, A.C)
    assert not list(path.parent.glob(".*tmp*"))  # no temporary left behind


def test_load_errors(tmp_path):
    with pytest.raises(FormatError, match="no such store"):
        MLRMatrix.load(tmp_path / "missing.zarr")
    import zarr

    g = zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    g.attrs["mlr_dask_format"] = "mlr-matrix"
    g.attrs["format_version"] = 99
    with pytest.raises(FormatError, match="format version"):
        MLRMatrix.load(tmp_path / "other.zarr")


def test_constructor_errors():
    h = Hierarchy.dyadic(8, 2)
    with pytest.raises(InputError, match="B has shape"):
        MLRMatrix(h, h, [1, 2], np.zeros((8, 2)))
    with pytest.raises(InputError, match="one entry per level"):
        MLRMatrix(h, h, [1], np.zeros((8, 1)))
    with pytest.raises(InputError, match="same number of blocks"):
        MLRMatrix(h, Hierarchy.dyadic(8, 3).truncate(2).refine([2, 1]), [1, 1, 0],
                  np.zeros((8, 2)), np.zeros((8, 2)))
    with pytest.raises(InputError, match="finite"):
        MLRMatrix(h, h, [1, 0], np.full((8, 1), np.nan))
    with pytest.raises(InputError, match="non-negative"):
        MLRMatrix(h, h, [1, -1], np.zeros((8, 0)))


def test_to_dense_refuses_huge():
    h = Hierarchy.dyadic(100_000, 2)
    A = MLRMatrix(h, h, [1, 0], np.zeros((100_000, 1)))
    with pytest.raises(InputError, match="dense 100000 x 100000"):
        A.to_dense()


def test_iterative_solvers_accept_operator():
    h = Hierarchy.dyadic(64, 4)
    h = h.refine(h.block_sizes(-1))
    rng = np.random.default_rng(0)
    B = rng.standard_normal((64, 7)) * 0.1
    B[:, -1] = 2.0  # diagonal 4: well conditioned SPD
    A = MLRMatrix(h, h, [2, 2, 1, 1, 1], B)
    b = rng.standard_normal(64)
    x, info = spla.cg(A, b, rtol=1e-12)
    assert info == 0
    assert np.allclose(x, A.solve(b), atol=1e-8)


@given(mlr_matrices(), st.data())
def test_submatrix_in_hierarchy_order(A, data):
    D = dense_reference(A)
    Dp = D[np.ix_(A.rows.perm, A.cols.perm)]
    m, n = A.shape
    r0 = data.draw(st.integers(0, m - 1))
    r1 = data.draw(st.integers(r0 + 1, m))
    c0 = data.draw(st.integers(0, n - 1))
    c1 = data.draw(st.integers(c0 + 1, n))
    assert np.allclose(A.submatrix(slice(r0, r1), slice(c0, c1)), Dp[r0:r1, c0:c1], atol=1e-10)

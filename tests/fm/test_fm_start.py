"""The randomized SVD start: exact when the sketch covers the range, three passes, no N x N
matrix; the convergence warning and the constant-feature checks."""

import tracemalloc
import warnings

import numpy as np
import pytest
from fm_dense import small_problem
from sklearn.exceptions import ConvergenceWarning

from mlr_dask import InputError
from mlr_dask.fm import MultilevelFactorModel
from mlr_dask.fm import em as fem
from mlr_dask.fm.tree import FactorTree
from mlr_dask.hierarchy import Hierarchy


class CountingRunner(fem.NumpyRunner):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls = []

    def map(self, task, per_chunk, bcast=..., what=""):
        self.calls.append(what)
        return super().map(task, per_chunk, bcast, what)


@pytest.mark.parametrize("shape", [(40, 9), (7, 30)])  # k = n < N, then k = N < n
def test_start_is_exact_svd_when_sketch_covers_the_range(shape):
    N, n = shape
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((N, n)) @ np.diag(np.linspace(3, 1, n)) + 5.0
    h = Hierarchy.from_boundaries([[0, n], [0, n // 2, n]])
    tree = FactorTree(h, [2, 1])
    runner = CountingRunner(Y, tree, h.leaf_chunks(4))
    state, _ = fem.svd_start(runner, tree, True, seed=3)
    assert runner.calls == ["moments", "range", "init"]
    Yc = Y - Y.mean(0)
    U, S, Vt = np.linalg.svd(Yc, full_matrices=False)
    ref = (Vt[:3].T * S[:3]) / np.sqrt(N)  # level 0 takes directions 0, 1; level 1 takes 2
    sign = np.sign(np.sum(state.F * ref, axis=0))
    np.testing.assert_allclose(state.F * sign, ref, rtol=1e-8, atol=1e-10)


def test_start_never_forms_an_N_by_N_matrix(monkeypatch):
    N, n = 6000, 16
    rng = np.random.default_rng(1)
    Y = rng.standard_normal((N, 3)) @ rng.standard_normal((3, n)) + rng.standard_normal((N, n))
    h = Hierarchy.from_boundaries([[0, n], [0, 8, n]])
    shapes = []
    for name in ("eigh", "qr", "svd", "eig", "inv", "solve", "cholesky"):
        orig = getattr(np.linalg, name)

        def spy(a, *args, _orig=orig, **kw):
            shapes.append(np.shape(a))
            return _orig(a, *args, **kw)
        monkeypatch.setattr(np.linalg, name, spy)
    tracemalloc.start()
    m = MultilevelFactorModel(h, [2, 1], max_iter=0).fit(Y)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert m.n_iter_ == 0 and np.isfinite(m.loglike_init_)
    assert all(max(s[-2:], default=0) < N for s in shapes if len(s) >= 2 and s[-1] == s[-2])
    assert peak < 0.1 * N * N * 8  # far below one N x N matrix (288 MB)


def test_convergence_warning_only_when_max_iter_ends_the_fit():
    h, ranks, Y = small_problem(seed=3)
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        m = MultilevelFactorModel(h, ranks, max_iter=2).fit(Y)
    assert not m.converged_ and m.n_iter_ == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        m = MultilevelFactorModel(h, ranks, max_iter=500, tol=1e-3).fit(Y)
    assert m.converged_ and m.n_iter_ < 500


def test_constant_and_near_constant_features():
    h, ranks, Y = small_problem(seed=3)
    Y = Y.copy()
    Y[:, 5] = 2.5
    with pytest.raises(InputError, match="constant feature.*5"):
        MultilevelFactorModel(h, ranks).fit(Y)
    Y[:, 5] = 2.5 + 1e-9 * np.random.default_rng(0).standard_normal(Y.shape[0])
    with pytest.warns(UserWarning, match="near-constant"):
        MultilevelFactorModel(h, ranks, max_iter=2).fit(Y)

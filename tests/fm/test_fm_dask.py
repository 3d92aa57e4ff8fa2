"""The Dask path gives the same iterates as the numpy path; checkpoints and resume."""

import dask
import dask.array as da
import numpy as np
import pytest
from fm_dense import small_problem

from mlr_dask import InputError
from mlr_dask.fm import MultilevelFactorModel
from mlr_dask.hierarchy import Hierarchy


@pytest.fixture(scope="module")
def problem():
    h = Hierarchy.from_boundaries(
        [[0, 60], [0, 20, 45, 60], [0, 10, 20, 30, 45, 52, 60]],
        perm=np.random.default_rng(0).permutation(60))
    return small_problem(seed=11, N=40, ranks=(3, 2, 2), hierarchy=h)


def _check_same(a, b, rtol=1e-10):
    np.testing.assert_allclose(a.loglike_, b.loglike_, rtol=rtol)
    assert a.loglike_init_ == pytest.approx(b.loglike_init_, rel=rtol)
    scale = np.abs(a.loadings_).max()
    np.testing.assert_allclose(a.loadings_, b.loadings_, rtol=0, atol=rtol * scale)
    np.testing.assert_allclose(a.noise_variance_, b.noise_variance_, rtol=rtol)


def test_dask_threaded_equals_numpy(problem):
    h, ranks, Y = problem
    ref = MultilevelFactorModel(h, ranks, max_iter=6, tol=0, chunk_size=15).fit(Y)
    leaves_chunks = ref.hierarchy_.leaf_chunks(15)
    assert leaves_chunks.size - 1 >= 3  # several chunks
    Yd = da.from_array(Y, chunks=(17, 13))  # chunks unrelated to the leaves
    with dask.config.set(scheduler="threads"):
        m = MultilevelFactorModel(h, ranks, max_iter=6, tol=0, chunk_size=15).fit(Yd)
        assert m.score(Yd) == pytest.approx(ref.score(Y), rel=1e-10)
    _check_same(m, ref)


def test_dask_nan_is_input_error(problem):
    h, ranks, Y = problem
    Y = Y.copy()
    Y[5, 7] = np.nan
    with dask.config.set(scheduler="threads"), pytest.raises(InputError, match="NaN"):
        MultilevelFactorModel(h, ranks, max_iter=2, chunk_size=15).fit(da.from_array(Y))


def test_local_cluster_two_processes_equals_numpy(problem, tmp_path):
    from mlr_dask.cluster import connect

    h, ranks, Y = problem
    ref = MultilevelFactorModel(h, ranks, max_iter=4, tol=0, chunk_size=15).fit(Y)
    with connect(n_workers=2, processes=True, quiet=True, memory_limit="1GB"):
        m = MultilevelFactorModel(h, ranks, max_iter=4, tol=0, chunk_size=15).fit(
            da.from_array(Y, chunks=(40, 20)))
    _check_same(m, ref)


class _Kill(Exception):
    pass


def test_resume_equals_uninterrupted(problem, tmp_path):
    h, ranks, Y = problem
    full = MultilevelFactorModel(h, ranks, max_iter=7, tol=0, chunk_size=15).fit(Y)
    ck = tmp_path / "fit.zarr"

    def kill_at_5(info):
        if info["iteration"] == 5:
            raise _Kill

    with pytest.raises(_Kill):
        MultilevelFactorModel(h, ranks, max_iter=7, tol=0, chunk_size=15).fit(
            Y, checkpoint=ck, checkpoint_every=3, callback=kill_at_5)
    seen = []
    m = MultilevelFactorModel(h, ranks, max_iter=7, tol=0, chunk_size=15).fit(
        Y, checkpoint=ck, checkpoint_every=3, resume=True,
        callback=lambda info: seen.append(info["iteration"]))
    assert seen == [4, 5, 6, 7]  # resumed after the checkpoint of iteration 3
    _check_same(m, full, rtol=1e-13)
    # a resumed fit refuses checkpoints of another fit
    with pytest.raises(InputError, match="another fit"):
        MultilevelFactorModel(h, [1, 1, 1], max_iter=7).fit(
            Y, checkpoint=ck, checkpoint_every=2, resume=True)


def test_dask_equals_numpy_with_capped_groups_and_standardize(problem):
    h, _, Y = problem
    ranks = [3, 18, [1, 0, 2, 11, 1, 9]]  # level 1 capped at 15, level 2 at 8
    ref = MultilevelFactorModel(h, ranks, max_iter=5, tol=0, chunk_size=15,
                                standardize=True).fit(Y)
    assert ref.rank_caps_ and [c["level"] for c in ref.rank_caps_] == [1, 2]
    Yd = da.from_array(Y, chunks=(17, 13))
    with dask.config.set(scheduler="threads"):
        m = MultilevelFactorModel(h, ranks, max_iter=5, tol=0, chunk_size=15,
                                  standardize=True).fit(Yd)
    _check_same(m, ref)
    np.testing.assert_allclose(m.scale_, ref.scale_, rtol=1e-12)

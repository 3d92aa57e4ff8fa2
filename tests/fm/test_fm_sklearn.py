"""MultilevelFactorModel as a scikit-learn estimator: check_estimator, clone, Pipeline,
cross_val_score, GridSearchCV, one-sample transform and score_samples."""

import numpy as np
import pytest
from fm_dense import small_problem
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import check_estimator

from mlr_dask.fm import MultilevelFactorModel
from mlr_dask.hierarchy import Hierarchy

_FIXED = "the hierarchy fixes 4 features; the check fits data with another feature count"
#: checks that fit data of their own width: they cannot apply to a model whose hierarchy
#: fixes the feature count (the same checks pass with the default one-group hierarchy)
EXPECTED_FIXED = {name: _FIXED for name in [
    "check_fit_score_takes_y", "check_estimators_overwrite_params",
    "check_dont_overwrite_parameters", "check_estimators_fit_returns_self",
    "check_readonly_memmap_input", "check_estimators_dtypes", "check_dtype_object",
    "check_pipeline_consistency", "check_estimators_pickle", "check_f_contiguous_array_estimator",
    "check_transformer_data_not_an_array", "check_transformer_general",
    "check_transformer_preserve_dtypes", "check_transformer_n_iter",
    "check_methods_sample_order_invariance", "check_methods_subset_invariance",
    "check_fit2d_1feature", "check_dict_unchanged", "check_fit_idempotent",
    "check_fit_check_is_fitted", "check_n_features_in", "check_fit2d_predict1d",
]}


def test_check_estimator_one_group_hierarchy():
    check_estimator(MultilevelFactorModel(ranks=1, max_iter=50))


def test_check_estimator_fixed_hierarchy():
    h = Hierarchy.from_boundaries([[0, 4], [0, 2, 4]])
    check_estimator(MultilevelFactorModel(h, [1, 1], max_iter=50),
                    expected_failed_checks=EXPECTED_FIXED)


@pytest.fixture(scope="module")
def problem():
    h, ranks, Y = small_problem(seed=4, n=24, N=120, levels=2, ranks=(2, 1))
    return h, ranks, Y


def test_clone_keeps_params_and_drops_fit(problem):
    h, ranks, Y = problem
    m = MultilevelFactorModel(h, ranks, max_iter=7, standardize=True).fit(Y)
    c = clone(m)
    assert c.get_params() == m.get_params()
    assert not hasattr(c, "n_iter_")
    assert c.set_params(max_iter=3).max_iter == 3 and m.max_iter == 7


def test_pipeline_score_and_cross_val_score(problem):
    h, ranks, Y = problem
    pipe = make_pipeline(FunctionTransformer(lambda x: 2.0 * x),
                         MultilevelFactorModel(h, ranks, max_iter=30))
    pipe.fit(Y)
    ref = MultilevelFactorModel(h, ranks, max_iter=30).fit(2.0 * Y)
    assert pipe.score(Y) == pytest.approx(ref.score(2.0 * Y), rel=1e-12)
    s = cross_val_score(MultilevelFactorModel(h, ranks, max_iter=30), Y, cv=3)
    assert s.shape == (3,) and np.all(np.isfinite(s))


def test_grid_search_over_ranks(problem):
    h, ranks, Y = problem
    grid = {"ranks": [[1, 1], [2, 1], [3, 2]]}
    gs = GridSearchCV(MultilevelFactorModel(h, max_iter=40), grid, cv=3).fit(Y)
    assert gs.best_params_["ranks"] in grid["ranks"]
    means = gs.cv_results_["mean_test_score"]
    assert np.argmax(means) == gs.best_index_
    # each score is the held-out average log-likelihood of that split
    best = MultilevelFactorModel(h, gs.best_params_["ranks"], max_iter=40).fit(Y)
    assert gs.best_estimator_.score(Y) == pytest.approx(best.score(Y), rel=1e-12)


def test_one_sample_transform_and_score(problem):
    h, ranks, Y = problem
    m = MultilevelFactorModel(h, ranks, max_iter=10).fit(Y)
    np.testing.assert_allclose(m.transform(Y[3:4]), m.transform(Y)[3:4], rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(m.score_samples(Y[5:6]), m.score_samples(Y)[5:6], rtol=1e-12)
    with pytest.raises(ValueError):
        m.transform(Y[3])  # 1-D input is refused (scikit-learn convention)

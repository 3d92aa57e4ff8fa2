import re

import numpy as np

from mlr_dask.fm.model import MultilevelFactorModel
from mlr_dask.hierarchy import Hierarchy
from mlr_dask.mlr import MLRMatrix


def _rects(html):
    return len(re.findall(r"<rect ", html))


def test_hierarchy_html():
    h = Hierarchy([[0, 10], [0, 4, 10], [0, 2, 4, 7, 10]], perm=np.arange(10)[::-1],
                  level_names=["all", "sector", "industry"])
    out = h._repr_html_()
    assert "Hierarchy" in out and "<svg" in out
    assert "sector: 2" in out and "industry: 4" in out
    assert "2 to 3" in out  # finest block sizes
    assert ">permuted</th><td style='padding:1px 8px'>yes" in out
    assert _rects(out) == 1 + 2 + 4
    big = Hierarchy.dyadic(1024, 10)._repr_html_()  # 512 blocks on the last level: one bar
    assert "512 blocks" in big and _rects(big) == sum(2**i for i in range(8)) + 2


def test_mlr_html():
    h = Hierarchy.dyadic(64, 3)
    rng = np.random.default_rng(0)
    M = MLRMatrix(h, h, [3, 2, 1], rng.standard_normal((64, 6)), rng.standard_normal((64, 6)))
    out = M._repr_html_()
    assert "64 x 64" in out and "[3, 2, 1]" in out
    assert "3 x 1, 2 x 2, 1 x 4" in out
    assert f"({M.storage})" in out and "(4096)" in out
    assert f"{M.storage / 4096:.4g}" in out
    assert "<svg" in out


def test_model_html_unfitted_and_fitted():
    h = Hierarchy([[0, 12], [0, 6, 12], [0, 3, 6, 9, 12]])
    model = MultilevelFactorModel(h, ranks=[2, 1, 1], max_iter=300, tol=1e-4)
    out = model._repr_html_()
    assert ">fitted</th><td style='padding:1px 8px'>no" in out and "[2, 1, 1]" in out
    rng = np.random.default_rng(1)
    Y = rng.standard_normal((200, 3)) @ rng.standard_normal((3, 12)) + rng.standard_normal(
        (200, 12))
    model.fit(Y)
    out = model._repr_html_()
    assert ">fitted</th><td style='padding:1px 8px'>yes" in out
    assert f"{model.loglike_[-1]:.6g}" in out
    assert f">{model.n_iter_}<" in out and ">200<" in out
    assert list(model.ranks_).__repr__() in out
    # what Jupyter shows (the mime bundle wins over scikit-learn's own diagram)
    assert model._repr_mimebundle_()["text/html"] == out

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlr_dask import Hierarchy, InputError

from strategies import hierarchy_pairs


def test_from_boundaries_attributes():
    h = Hierarchy.from_boundaries([[0, 10], [0, 4, 10], [0, 2, 4, 7, 10]], perm=np.arange(10)[::-1])
    assert h.n == 10 and h.n_levels == 3 and h.n_blocks == (1, 2, 4)
    assert h.block_sizes(2).tolist() == [2, 2, 3, 3]
    assert h.perm.tolist() == list(range(9, -1, -1))
    assert np.array_equal(h.perm[h.iperm], np.arange(10))
    assert h.parents(2).tolist() == [0, 0, 1, 1]
    assert list(h.children(1, 1)) == [2, 3]
    assert h.ancestors.tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [0, 1, 3]]
    assert h.block_of(1).tolist() == [0] * 4 + [1] * 6


@pytest.mark.parametrize(
    "bounds, perm, message",
    [
        ([[0, 10], [0, 4, 9]], None, "does not cover"),
        ([[0, 10], [0, 4, 4, 10]], None, "empty block"),
        ([[0, 10], [0, 6, 4, 10]], None, "not sorted"),
        ([[0, 10], [0, 5, 10], [0, 4, 10]], None, "not nested"),
        ([[0, 5, 10]], None, "root"),
        ([[0, 10]], np.arange(9), "perm has shape"),
        ([[0, 3]], [0, 0, 1], "not a permutation"),
        ([[0, 3]], [0, 1, 3], "not a permutation"),
        ([], None, "at least one level"),
        ([[0, 2.5]], None, "integers"),
    ],
)
def test_validation_errors(bounds, perm, message):
    with pytest.raises(InputError, match=message):
        Hierarchy.from_boundaries(bounds, perm)


def test_from_labels_stable_sort_and_nesting():
    sector = np.array(["b", "a", "b", "a", "c", "a"])
    industry = np.array([1, 2, 1, 1, 1, 2])  # industry 1 under a and b are different groups
    h = Hierarchy.from_labels([sector, industry])
    assert h.n_blocks == (1, 3, 4)
    # stable: within equal label paths, original order is kept
    assert h.perm.tolist() == [3, 1, 5, 0, 2, 4]
    assert h.boundaries[1].tolist() == [0, 3, 5, 6]
    assert h.boundaries[2].tolist() == [0, 1, 3, 5, 6]
    assert h.level_names is None


def test_from_labels_errors():
    with pytest.raises(InputError, match="shape"):
        Hierarchy.from_labels([np.zeros(4), np.zeros(3)])
    with pytest.raises(InputError, match="NaN"):
        Hierarchy.from_labels([np.array([0.0, np.nan])])


def test_dyadic_and_refine():
    h = Hierarchy.dyadic(10, 3)
    assert h.n_blocks == (1, 2, 4)
    atoms = h.refine(h.block_sizes(-1))
    assert atoms.has_atoms and atoms.n_blocks[-1] == 10
    with pytest.raises(InputError):
        Hierarchy.dyadic(3, 4)
    with pytest.raises(InputError):
        h.refine([1, 1, 1, 9])


def test_random_is_valid_and_seeded():
    a = Hierarchy.random(50, 4, rng=3)
    b = Hierarchy.random(50, 4, rng=3)
    assert a == b and hash(a) == hash(b)
    assert a.n == 50 and a.n_levels == 4


@given(hierarchy_pairs(max_levels=5, max_leaf=5))
def test_tree_queries_match_brute_force(pair):
    h, _ = pair
    for lvl in range(h.n_levels):
        owner = h.block_of(lvl)
        for k, (a, b) in enumerate(zip(h.boundaries[lvl][:-1], h.boundaries[lvl][1:])):
            assert np.all(owner[a:b] == k)
    leaf_start = h.boundaries[-1][:-1]
    for lvl in range(h.n_levels):
        assert np.array_equal(h.ancestors[:, lvl], h.block_of(lvl)[leaf_start])
    for lvl in range(1, h.n_levels):
        assert np.array_equal(h.parents(lvl), h.block_of(lvl - 1)[h.boundaries[lvl][:-1]])


@given(hierarchy_pairs(max_levels=4, max_leaf=6), st.integers(1, 12))
def test_leaf_chunks(pair, max_items):
    h, _ = pair
    c = h.leaf_chunks(max_items)
    assert c[0] == 0 and c[-1] == h.n and np.all(np.diff(c) > 0)
    assert set(c.tolist()) <= set(h.boundaries[-1].tolist())
    for a, b in zip(c[:-1], c[1:]):
        # over the limit only when the chunk is a single leaf
        assert b - a <= max_items or len(h.leaves_in(a, b)) == 1


def test_zarr_round_trip(tmp_path):
    import zarr

    h = Hierarchy.random(30, 4, rng=1)
    g = zarr.open_group(str(tmp_path / "h.zarr"), mode="w")
    h.write_zarr(g)
    assert Hierarchy.read_zarr(zarr.open_group(str(tmp_path / "h.zarr"), mode="r")) == h


def test_from_coords_xarray():
    import xarray as xr

    da = xr.DataArray(
        np.zeros((2, 5)), dims=("sample", "feature"),
        coords={"sector": ("feature", ["x", "y", "x", "y", "x"]),
                "industry": ("feature", [1, 1, 2, 1, 1]),
                "day": ("sample", [0, 1])},
    )
    h = Hierarchy.from_coords(da, "feature", ["sector", "industry"])
    assert h.n_blocks == (1, 2, 3)
    assert h.level_names == ("root", "sector", "industry")
    assert h.perm.tolist() == [0, 4, 2, 1, 3]
    with pytest.raises(InputError, match="not found"):
        Hierarchy.from_coords(da, "feature", ["gics"])
    with pytest.raises(InputError, match="dims"):
        Hierarchy.from_coords(da, "feature", ["day"])

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # fm_dense.py: dense references


def pytest_collection_modifyitems(config, items):
    """Short fits in these tests stop at max_iter on purpose: their ConvergenceWarning is
    noise here (tests of the warning use pytest.warns, which still sees it)."""
    import pytest

    here = str(__file__).rsplit("/", 1)[0]
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.filterwarnings(
                "ignore::sklearn.exceptions.ConvergenceWarning"))

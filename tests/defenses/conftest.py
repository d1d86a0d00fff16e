"""Defense-test fixtures: the backdoored digits model is trained once per session (see tests/helpers/defensetest.py)."""
from __future__ import annotations

import pytest
from defensetest import train_backdoor


@pytest.fixture(scope="session")
def backdoor():
    """BadNets (3x3 grid, target 0, 10 % of non-target digits) on a width-16 small CNN: ASR ~1, BA ~0.99."""
    return train_backdoor()

"""Shared pytest fixtures: real object-storage servers on loopback (see fixtures_storage.py).

Nothing in the tests may probe a cloud metadata address: botocore's credential chain and google-auth both would
(169.254.169.254 / metadata.google.internal) when no credentials are configured. Set before anything imports them:
AWS_EC2_METADATA_DISABLED (botocore skips the instance-metadata provider), NO_GCE_CHECK (google-auth's
compute_engine._metadata skips its ping) and GCE_METADATA_HOST / GCE_METADATA_IP at a closed loopback port.
"""

import builtins
import os

import pytest

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["NO_GCE_CHECK"] = "true"
os.environ["GCE_METADATA_HOST"] = "127.0.0.1:9"
os.environ["GCE_METADATA_IP"] = "127.0.0.1:9"

from fixtures_storage import *  # noqa: E402,F401,F403


@pytest.fixture(autouse=True)
def _print_is_restored():
    """Tests that run a pipeline through kfp.local directly can leave print() indented (see
    repeatlab.runner.print_restored); the next test must see the real print."""
    original = builtins.print
    yield
    builtins.print = original

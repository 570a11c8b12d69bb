"""Shared test setup: offline model hubs, one torch thread, small fixtures."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# The user cache (hub specs of --hub auto, the record of trusted TorchScript files) of this test session only.
os.environ["HP_RL_CACHE"] = tempfile.mkdtemp(prefix="hp_rl_test_cache_")

import pytest
import torch

from hp_rl.core.console import configure_logging

torch.set_num_threads(1)
# The library's log on the console, as every command line sets it up: the same for every test, whatever order
# the tests run in (a test that calls a command line's main would otherwise change it for the tests after it).
configure_logging()


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)

"""Test-wide settings: everything runs offline on CPU."""
import os

# Fail fast instead of retrying the Hugging Face hub (there is no network in tests).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from lavis.common.registry import registry  # noqa: E402

import lavis_mmict  # noqa: E402,F401  (registers models, builders, tasks, runners)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def fresh_registry_paths():
    """LAVIS refuses to register a path twice; runners register output/result dirs."""
    saved = dict(registry.mapping["paths"])
    yield
    registry.mapping["paths"].clear()
    registry.mapping["paths"].update(saved)


def pytest_sessionfinish(session, exitstatus):
    """Tear down the in-process gloo group (tests that build runners create one) as train.py
    does, so its worker threads are joined before the interpreter exits."""
    from lavis_mmict.dist import destroy_distributed

    destroy_distributed(finished=True)

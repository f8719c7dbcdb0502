"""Test-wide settings: everything runs offline on CPU.

Tests that start a process (a subprocess, torchrun, spawned workers) are marked ``slow``
(pytest.ini); ``pytest -m "not slow"`` (``make test-quick``) is the quick loop. Test files import
shared helpers from these modules, never from each other:
    _batches.py        tiny in-context batches (``make_batch`` and the models' presets)
    _llm_spy.py        what a model's LLM received (forward inputs, generate calls)
    _aim_model.py      the tiny aim_opt model, built with config overrides
    _lavis_blip2.py    LAVIS's own Blip2OPT / Blip2T5 at tiny sizes offline (the oracle), a stage-1 stand-in
    _jobs.py           a toy training job in-process (config, runner) and its log.txt records
    _subprocesses.py   train.py / evaluate.py / torchrun in a child process, no-network guard log
    _dataset_files.py  small data sets in each annotation format, with real media files
    _release_files.py  miniatures of the official releases (MSVD-QA, MSRVTT-QA, COCO Karpathy, VQAv2)
    _toy_plugin.py     the toy model and dataset builder (also imported by train.py subprocesses)
    _rank_probe.py, _sweep_probe.py, _rank_cwd.py, _no_network/   imported by train.py / evaluate.py subprocesses
"""
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

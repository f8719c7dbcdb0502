"""Packaging: ranges in setup.py (a user's torch is kept), exact pins in constraints.txt (used by
make), every third-party module the package imports declared, the console scripts.

The resolver dry run needs the package index: it runs only with LAVIS_MMICT_NETWORK_TESTS=1
(``make test-packaging``) and is skipped otherwise, so the default suite stays offline.
"""
import ast
import json
import os
import subprocess
import sys
import sysconfig
from distutils.core import run_setup  # setuptools' vendored distutils

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from conftest import REPO_ROOT

#: import name -> distribution name, where they differ
DISTRIBUTION_OF = {"lavis": "salesforce-lavis", "cv2": "opencv-python-headless", "PIL": "pillow",
                   "yaml": "pyyaml"}


@pytest.fixture(scope="module")
def distribution():
    cwd = os.getcwd()
    try:
        os.chdir(REPO_ROOT)
        return run_setup("setup.py", stop_after="init")
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def requirements(distribution):
    return {Requirement(r).name.lower(): Requirement(r) for r in distribution.install_requires}


def third_party_imports(folder):
    """Top-level module names imported anywhere under ``folder``, minus the standard library and us."""
    names = set()
    for directory, _, file_names in os.walk(folder):
        for file_name in file_names:
            if file_name.endswith(".py"):
                tree = ast.parse(open(os.path.join(directory, file_name)).read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        names.update(alias.name.split(".")[0] for alias in node.names)
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "lavis_mmict"}


def test_torch_is_a_range_not_a_pin(requirements):
    torch = requirements["torch"].specifier
    assert not any(spec.operator == "==" for spec in torch)
    assert {"2.3.0", "2.13.0", "2.14.1", "2.15.0"} <= set(torch.filter(["2.2.0", "2.3.0", "2.13.0", "2.14.1",
                                                                        "2.15.0", "3.0.0"]))


def test_every_module_the_package_imports_is_declared(requirements):
    imported = third_party_imports(os.path.join(REPO_ROOT, "lavis_mmict"))
    assert {"torch", "lavis", "webdataset", "decord", "cv2", "pycocoevalcap", "timm", "omegaconf",
            "safetensors"} <= imported
    undeclared = {name for name in imported if DISTRIBUTION_OF.get(name, name).lower() not in requirements}
    assert undeclared == set()


def test_constraints_pin_every_requirement_inside_its_range_and_make_uses_them(requirements):
    pins = {}
    for line in open(os.path.join(REPO_ROOT, "constraints.txt")):
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    for name, requirement in requirements.items():
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name], requirement)
    assert 'pip install --quiet -c constraints.txt -e ".[test]"' in open(os.path.join(REPO_ROOT, "Makefile")).read()


def test_console_scripts_are_train_and_evaluate(distribution):
    scripts = dict(entry.split(" = ") for entry in distribution.entry_points["console_scripts"])
    assert scripts == {"lavis-mmict-train": "lavis_mmict.commands:train_main",
                       "lavis-mmict-evaluate": "lavis_mmict.commands:evaluate_main"}


@pytest.mark.slow
def test_console_script_reports_a_user_error_as_one_line_under_its_name(tmp_path):
    code = ("import sys; sys.argv = ['lavis-mmict-train', '--cfg-path', sys.argv[1]]; "
            "from lavis_mmict.commands import train_main; train_main()")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing.yaml")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("lavis-mmict-train: error: ")
    assert "missing.yaml" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LAVIS_MMICT_NETWORK_TESTS") != "1",
                    reason="needs the package index: set LAVIS_MMICT_NETWORK_TESTS=1 (make test-packaging)")
def test_resolver_keeps_another_supported_torch(tmp_path):
    """``pip install --dry-run`` of the package beside torch 2.13.0 (not the tested 2.14.1) keeps it."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    report = tmp_path / "report.json"
    result = subprocess.run(pip + ["install", "--dry-run", "--quiet", "--report", str(report), "--ignore-installed",
                                   REPO_ROOT, "torch==2.13.0"],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    chosen = {item["metadata"]["name"].lower(): item["metadata"]["version"]
              for item in json.load(open(report))["install"]}
    assert Version(chosen["torch"]).public == "2.13.0"  # the index also has a "2.13.0+cpu" build
    assert chosen["lavis-mmict"] == "0.1.0"
    assert chosen["salesforce-lavis"] == "1.0.2"

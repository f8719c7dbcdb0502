"""The README's Layout section lists every module of the package, and nothing that is gone."""
import os
import re

from conftest import REPO_ROOT

PACKAGE = "lavis_mmict"


def layout_entries():
    """Paths under lavis_mmict/ named in README.md's Layout block (indentation gives the folder)."""
    with open(os.path.join(REPO_ROOT, "README.md")) as file:
        text = file.read()
    block = re.search(r"^## Layout\n+```\n(.*?)^```", text, re.S | re.M).group(1)
    lines = block.splitlines()
    start = lines.index(f"{PACKAGE}/")
    entries, folder = set(), ""
    for line in lines[start + 1:]:
        if not line.strip() or not line.startswith("  "):
            break
        if line.startswith(" " * 26):  # a wrapped description
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        if depth == 1:
            folder = name if name.endswith("/") else ""
            entries.add(name)
        else:
            entries.add(folder + name)
    return entries


def test_layout_lists_every_module_and_only_existing_paths():
    entries = layout_entries()
    root = os.path.join(REPO_ROOT, PACKAGE)
    modules = {
        os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
        for folder, _, names in os.walk(root) if "__pycache__" not in folder
        for name in names if name.endswith(".py")
    }
    assert modules - entries == set(), "modules missing from README.md's Layout"
    missing = sorted(entry for entry in entries if not os.path.exists(os.path.join(root, entry)))
    assert missing == [], "README.md's Layout names paths that do not exist"

"""Shared helpers of the data-preparation scripts: json reading and atomic json writing."""
import json
import os


def read_json(path):
    with open(path, "r") as file:
        return json.load(file)


def write_json_atomic(path, content):
    """Write ``content`` to ``path`` under a temporary name, then rename: never a half-written file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as file:
        json.dump(content, file)
    os.replace(temporary, path)


def question_type(question):
    """The question word (what / who / how / when / where / ...): MSVD-QA and MSRVTT-QA report per type."""
    words = question.strip().lower().split()
    return words[0] if words else "other"

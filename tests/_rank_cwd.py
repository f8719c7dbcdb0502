"""Imported by train.py in the shared-storage test (via LAVIS_MMICT_EXTRA_IMPORTS): on rank 1 the
process changes to ``$RANK1_CWD``, so a relative ``run.output_dir`` is another folder there, as a
node-local path on a second node would be."""
import os

import _toy_plugin  # noqa: F401  (the toy model and builder of the job)

if os.environ.get("RANK") == "1":
    os.chdir(os.environ["RANK1_CWD"])

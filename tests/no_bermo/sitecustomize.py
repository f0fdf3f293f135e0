"""Loaded at start-up of a child Python whose PYTHONPATH names this folder: makes `bermo` unimportable.

The remote-code tests run in such a process, so that what loads a checkpoint is the code copied next to it
(trust_remote_code=True), never our installed package (an installed, registered plugin shadows Hub code).
"""

import sys


class _BlockBermo:
    def find_spec(self, name, path=None, target=None):
        if name == "bermo" or name.startswith("bermo."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked for this test)", name=name)
        return None


sys.meta_path.insert(0, _BlockBermo())

"""Atomic file writes, shared by the training loop and the experiments."""

import os
import threading
from pathlib import Path


def write_text_atomic(path, text):
    """Write text through a temporary file in the same folder, then os.replace: readers see the old or the new file,
    never half of one (the temporary name is unique per process and thread)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)

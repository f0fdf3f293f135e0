"""Atomic file writes, shared by the training loop, the demo and the experiments."""

import os
import threading
from pathlib import Path


def _temporary(path, suffix=""):
    """A name beside `path`, unique per process and thread, hidden (leading dot)."""
    return path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp{suffix}")


def write_text_atomic(path, text):
    """Write text through a temporary file in the same folder, then os.replace: readers see the old or the new file,
    never half of one."""
    path = Path(path)
    temporary = _temporary(path, path.suffix)
    temporary.write_text(text)
    os.replace(temporary, path)


def save_figure_atomic(figure, path, **savefig_kwargs):
    """`figure.savefig` through a temporary file in the same folder (format from `path`'s suffix), then os.replace;
    the figure is closed."""
    import matplotlib.pyplot as plt

    path = Path(path)
    temporary = _temporary(path, path.suffix)
    try:
        figure.savefig(temporary, **savefig_kwargs)
    finally:
        plt.close(figure)
    os.replace(temporary, path)

"""Import transformers' own common model tests from the `tests/` folder of a transformers sdist.

The sdist on PyPI ships `tests/test_modeling_common.py` (with `ModelTesterMixin`) but not two modules it imports
relatively: `tests/exporters/test_export.py` and `tests/generation/test_utils.py`. `load_test_modeling_common` makes a
package whose modules come from the sdist's `tests/` folder, puts our stand-ins (`stand_ins.py`) at those two names,
and imports `test_modeling_common` from it. Nothing from the sdist is copied into this repository.
"""

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

# The environment variable that `scripts/transformers_common_tests.sh` sets to the sdist's `tests/` folder.
SDIST_TESTS_ENV = "BERMO_TRANSFORMERS_SDIST_TESTS"
PACKAGE = "transformers_sdist_tests"
STAND_INS = Path(__file__).resolve().parent / "stand_ins.py"


def sdist_tests_dir():
    """The sdist's `tests/` folder named by the environment, or None when it is not set."""
    value = os.environ.get(SDIST_TESTS_ENV)
    return Path(value) if value else None


def _package(name, path):
    module = types.ModuleType(name)
    module.__path__ = [str(path)] if path is not None else []
    module.__package__ = name
    sys.modules[name] = module
    return module


def load_test_modeling_common(tests_dir):
    """`test_modeling_common` from the sdist's `tests/` folder, with the stand-ins in place of its missing imports."""
    tests_dir = Path(tests_dir)
    if not (tests_dir / "test_modeling_common.py").is_file():
        raise FileNotFoundError(
            f"{tests_dir}: no test_modeling_common.py (not the tests/ folder of a transformers sdist)"
        )
    if f"{PACKAGE}.test_modeling_common" in sys.modules:
        return sys.modules[f"{PACKAGE}.test_modeling_common"]
    _package(PACKAGE, tests_dir)
    spec = importlib.util.spec_from_file_location(f"{PACKAGE}._stand_ins", STAND_INS)
    stand_ins = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = stand_ins
    spec.loader.exec_module(stand_ins)
    for subpackage, module_name in (("exporters", "test_export"), ("generation", "test_utils")):
        _package(f"{PACKAGE}.{subpackage}", None)
        sys.modules[f"{PACKAGE}.{subpackage}.{module_name}"] = stand_ins
    return importlib.import_module(f"{PACKAGE}.test_modeling_common")

"""Set-up for transformers' common model tests, as transformers' own root conftest.py (not in the sdist) does it as far
as these tests need: its pytest markers, no automatic safetensors conversion PRs, FutureWarnings silenced; and
transformers' default log level (warning), which tests/conftest.py lowers to errors for our own tests but which the
common tests read (they assert on logged warnings such as "Reinit due to size mismatch").

With `BERMO_COMMON_TESTS_SUMMARY` set to a file path, the session's count of tests (a test with any failed subtest is
failed) is written there as one line, for scripts/transformers_common_tests.sh.
"""

import os
import warnings
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging

warnings.simplefilter("ignore", category=FutureWarning)

# Tiny tensors: one thread is faster than two threads competing on a busy 2-core machine (about half the time).
torch.set_num_threads(1)

MARKERS = {
    "slow": "slow test, run only with RUN_SLOW=1",
    "accelerate_tests": "test that requires accelerate",
    "not_device_test": "test that always runs on CPU",
    "torch_compile_test": "test of torch.compile",
    "torch_export_test": "test of torch.export",
    "flash_attn_test": "test of flash attention",
    "flash_attn_3_test": "test of flash attention 3",
    "flash_attn_4_test": "test of flash attention 4",
    "all_flash_attn_test": "test of every flash attention version",
    "training_ci": "training CI test",
    "tensor_parallel_ci": "tensor-parallel CI test",
}

SUMMARY_ENV = "BERMO_COMMON_TESTS_SUMMARY"
_reports = {}  # nodeid -> {"failed": bool, "call": outcome or None, "subtests": [outcome, ...]}


def pytest_configure(config):
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    os.environ["DISABLE_SAFETENSORS_CONVERSION"] = "true"
    transformers_logging.set_verbosity_warning()


def pytest_runtest_logreport(report):
    # setup/call/teardown reports and one report per subtest (`self.subTest`) share the test's nodeid
    record = _reports.setdefault(report.nodeid, {"failed": False, "call": None, "subtests": []})
    record["failed"] |= report.failed
    if type(report).__name__ == "SubtestReport":
        record["subtests"].append(report.outcome)
    elif report.when == "call" or report.skipped:
        record["call"] = report.outcome


def test_outcome(record):
    """failed: any phase or subtest failed; skipped: the test, or every one of its subtests, was skipped (then nothing
    was checked, e.g. a check run once per model class that applies to none); passed otherwise."""
    if record["failed"]:
        return "failed"
    if record["call"] == "skipped" or (record["subtests"] and all(o == "skipped" for o in record["subtests"])):
        return "skipped"
    return "passed"


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get(SUMMARY_ENV)
    if not path:
        return
    counts = {"passed": 0, "skipped": 0, "failed": 0}
    for record in _reports.values():
        counts[test_outcome(record)] += 1
    line = f"{counts['passed']} passed, {counts['skipped']} skipped, {counts['failed']} failed"
    Path(path).write_text(line + "\n")

#!/usr/bin/env bash
# transformers' own common model tests (ModelTesterMixin) against BERMo's five classes, and against the RoBERTa,
# DeBERTa-v2 and ModernBERT classes (tests/transformers_common/test_bermo_families_common.py).
#
# Downloads the sdist of the installed transformers version from PyPI (its tests/ folder holds
# tests/test_modeling_common.py; nothing of it is kept in this repository), caches it under .cache/ (ignored by its
# own .gitignore), and runs tests/transformers_common/test_bermo_common.py against it in one process. Slow tests
# (the export tests) included. Ends with one line of counts: passed, skipped, failed.
# Extra arguments go to pytest (e.g. -k export).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
# Offline, as the rest of the suite; transformers would otherwise fetch hub kernels when loading on a GPU.
export HF_HUB_OFFLINE=1 USE_HUB_KERNELS="${USE_HUB_KERNELS:-0}"

version="$("$PY" -c 'import importlib.metadata as m; print(m.version("transformers"))')"
cache_root=".cache/transformers-sdist"
sdist="$cache_root/transformers-$version"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [ ! -f "$sdist/tests/test_modeling_common.py" ]; then
    mkdir -p "$cache_root"
    [ -f .cache/.gitignore ] || printf '# created by scripts/transformers_common_tests.sh\n*\n' > .cache/.gitignore
    "$PY" -m pip download --quiet --no-deps --no-binary :all: "transformers==$version" -d "$work/download"
    # extracted beside the cache (same file system), then put in place by one rename: an interrupted run never
    # leaves a half-extracted cache
    partial="$(mktemp -d "$cache_root/.partial.XXXXXX")"
    trap 'rm -rf "$work" "$partial"' EXIT
    tar -xzf "$work/download/transformers-$version.tar.gz" -C "$partial" "transformers-$version/tests"
    if [ ! -f "$partial/transformers-$version/tests/test_modeling_common.py" ]; then
        echo "transformers $version sdist has no tests/test_modeling_common.py" >&2
        exit 2
    fi
    rm -rf "$sdist"
    mv "$partial/transformers-$version" "$sdist"
fi

summary="$work/summary.txt"
start=$SECONDS
status=0
BERMO_TRANSFORMERS_SDIST_TESTS="$PWD/$sdist/tests" BERMO_COMMON_TESTS_SUMMARY="$summary" RUN_SLOW=1 \
    "$PY" -m pytest -q -p no:cacheprovider -rfEs -W ignore::FutureWarning \
    tests/transformers_common/test_bermo_common.py tests/transformers_common/test_bermo_families_common.py "$@" || status=$?
counts="$(cat "$summary" 2>/dev/null || echo "no result")"
echo "transformers $version common model tests on BERMo: $counts ($((SECONDS - start)) s)"
exit "$status"

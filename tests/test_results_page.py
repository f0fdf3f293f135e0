"""The results page (experiments/README.md) quotes its summaries exactly.

Every table on the page says where it comes from, in an HTML comment on the line before it (invisible when the
page is rendered): `<!-- copied from results/<study>/summary.md -->` for a table copied from a summary, or
`<!-- assembled here: <why> -->` for the few tables the page composes itself (the headline, before/after tables).
A copied table must be identical, line for line, to a whole table of that summary.
"""

import re
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
PAGE = EXPERIMENTS / "README.md"
MARKER = re.compile(r"^<!-- (copied from (?P<source>results/\S+\.md)|assembled here: .+) -->$")


def tables(lines):
    """[(index of the first line, [lines])] of the markdown tables (runs of lines starting with '|')."""
    found, current = [], []
    for index, line in enumerate(lines + [""]):
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append((index - len(current), current))
            current = []
    return found


def marker_of(lines, first):
    """The marker comment on the line before a table (one blank line in between allowed), or None."""
    for index in (first - 1, first - 2):
        if index >= 0 and lines[index].strip():
            return MARKER.match(lines[index].strip())
    return None


def page_tables():
    lines = PAGE.read_text().splitlines()
    return [(first + 1, table, marker_of(lines, first)) for first, table in tables(lines)]


def test_tables_are_found_and_few_are_assembled():
    found = page_tables()
    assert len(found) > 10
    assembled = [line for line, _, marker in found if marker and not marker.group("source")]
    assert len(assembled) <= 3, f"tables assembled on the page itself (lines {assembled}): copy them from summaries"


@pytest.mark.parametrize("line,table,marker", page_tables(), ids=lambda value: str(value) if isinstance(value, int)
                         else "")
def test_every_table_says_where_it_comes_from_and_copied_ones_match_their_summary(line, table, marker):
    assert marker is not None, (f"experiments/README.md line {line}: a table without its source; put "
                                "`<!-- copied from results/<study>/summary.md -->` (or `<!-- assembled here: why -->`) "
                                "on the line before it")
    if not marker.group("source"):
        return
    source = EXPERIMENTS / marker.group("source")
    assert source.is_file(), f"line {line}: {marker.group('source')} does not exist"
    summary_tables = [t for _, t in tables(source.read_text().splitlines())]
    assert table in summary_tables, (f"experiments/README.md line {line}: this table is not identical to any table "
                                     f"of {marker.group('source')}")

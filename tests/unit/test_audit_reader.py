"""The e2e suite's reader of the audit log takes only complete lines (tests/e2e/test_routes.py)."""

from __future__ import annotations

import json

from tests.e2e.test_routes import complete_records


def test_only_terminated_lines_are_records_in_each_file() -> None:
    a, b, c = ({"request_id": k} for k in "abc")
    files = (
        json.dumps(a) + "\n" + json.dumps(b)[:7]  # b is still being appended
        + "\x1e" + json.dumps(c) + "\n"  # the next file begins with a record
        + "\x1e"  # and one file is empty
    )  # fmt: skip
    assert complete_records(files) == [a, c]
    assert complete_records("") == []

"""One JUnit file and one perf.csv from the many that the nodes of a CI run wrote.

JUnit goes through junitparser: every test suite of every file, properties and all,
under one <testsuites> whose counts are recomputed. perf.csv rows are concatenated in
file order; the columns are the first file's, then any new ones in the order met.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_madengine.errors import (
    MAX_LINE_BYTES,
    MAX_TABLE_BYTES,
    MadError,
    first_line,
    open_input,
)

MAX_JUNIT_BYTES = 256 << 20  # a JUnit file is parsed whole
MAX_MERGED_ROWS = 10_000_000
_CHUNK_ROWS = 50_000


@dataclass(frozen=True)
class JunitTotals:
    suites: int
    tests: int
    failures: int
    errors: int
    skipped: int


def merge_junit(paths: Sequence[Path], output: Path) -> JunitTotals:
    from junitparser import JUnitXml, JUnitXmlError, TestSuite  # the `report` extra

    merged = JUnitXml()
    for path in paths:
        # Bytes, read bounded: lxml reads the encoding the file declares (UTF-8 if none).
        with open_input(path, max_bytes=MAX_JUNIT_BYTES) as handle:
            data = handle.readall()
        try:
            document = JUnitXml.fromstring(data)
        except (JUnitXmlError, SyntaxError, ValueError) as exc:  # XMLSyntaxError: SyntaxError
            raise MadError(f"{path}: not a JUnit XML file ({first_line(exc)})") from None
        suites = [document] if isinstance(document, TestSuite) else list(document)
        for suite in suites:
            merged.add_testsuite(suite)
    merged.update_statistics()
    _write(output, lambda partial: merged.write(str(partial), pretty=True))
    return JunitTotals(
        len(list(merged)), merged.tests, merged.failures, merged.errors, merged.skipped
    )


def merge_csv(paths: Sequence[Path], output: Path, max_rows: int = MAX_MERGED_ROWS) -> int:
    """Rows written: streamed a chunk at a time, so any size merges in bounded memory."""
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(_csv_input(path)) for path in paths]
        headers = [_header(path, handle) for path, handle in zip(paths, handles, strict=True)]
        columns = list(dict.fromkeys(name for header in headers for name in header))
        rows = 0

        def write(partial: Path) -> None:
            nonlocal rows
            with partial.open("w", newline="", encoding="utf-8") as out:
                csv.writer(out).writerow(columns)
                for path, handle, header in zip(paths, handles, headers, strict=True):
                    for chunk in _chunks(path, handle, header):
                        rows += len(chunk)
                        if rows > max_rows:
                            raise MadError(f"{path}: more than {max_rows} rows in all"
                                           " (a merge writes at most that many)")  # fmt: skip
                        chunk.reindex(columns=columns, fill_value="").to_csv(
                            out, header=False, index=False
                        )

        _write(output, write)
    return rows


def _csv_input(path: Path) -> io.TextIOWrapper:
    if not path.exists() and not path.is_symlink():
        raise MadError(f"{path}: no such file")
    raw = open_input(path, max_bytes=MAX_TABLE_BYTES, max_line_bytes=MAX_LINE_BYTES)
    return io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8-sig", newline="")


def _header(path: Path, handle: io.TextIOWrapper) -> list[str]:
    """The first row; the handle is left at the second, where the rows are read on."""
    try:
        header = next(csv.reader(handle), None)
    except (csv.Error, ValueError) as exc:  # a NUL, a field past the limit, not UTF-8
        raise MadError(f"{path}: not a readable CSV ({first_line(exc)})") from None
    if not header:
        raise MadError(f"{path}: empty, where a CSV with a header was expected")
    return [name.strip() for name in header]


def _chunks(path: Path, handle: io.TextIOWrapper, header: list[str]) -> Iterator[Any]:
    import pandas as pd  # the `report` extra

    try:
        reader = pd.read_csv(handle, header=None, names=header, index_col=False, dtype=str,
                             keep_default_na=False, chunksize=_CHUNK_ROWS)  # fmt: skip
        with reader:
            yield from reader
    except pd.errors.EmptyDataError:
        return  # a header and no row
    except (ValueError, pd.errors.ParserError) as exc:
        raise MadError(f"{path}: not a readable CSV ({first_line(exc)})") from None


def _write(output: Path, write: Callable[[Path], None]) -> None:
    """Through a partial file beside `output`, renamed at the end: a merge that fails
    halfway leaves no half file, and an output that is also an input is read whole."""
    partial = output.with_name(f".{output.name}.partial")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        write(partial)
        partial.replace(output)
    except OSError as exc:
        raise MadError(f"{output}: cannot write ({exc.strerror or exc})") from None
    finally:
        partial.unlink(missing_ok=True)

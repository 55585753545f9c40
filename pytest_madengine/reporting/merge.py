"""One JUnit file and one perf.csv from the many that the nodes of a CI run wrote.

JUnit goes through junitparser: every test suite of every file, properties and all,
under one <testsuites> whose counts are recomputed. perf.csv rows are concatenated in
file order; the columns are the first file's, then any new ones in the order met.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_madengine.errors import MadError


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
        try:
            document = JUnitXml.fromfile(str(path))
        except OSError as exc:
            raise MadError(f"{path}: {exc.strerror}") from None
        except (JUnitXmlError, SyntaxError, ValueError) as exc:  # ParseError is a SyntaxError
            raise MadError(f"{path}: not a JUnit XML file ({str(exc).splitlines()[0]})") from None
        suites = [document] if isinstance(document, TestSuite) else list(document)
        for suite in suites:
            merged.add_testsuite(suite)
    merged.update_statistics()
    output.parent.mkdir(parents=True, exist_ok=True)
    merged.write(str(output), pretty=True)
    return JunitTotals(
        len(list(merged)), merged.tests, merged.failures, merged.errors, merged.skipped
    )


def merge_csv(paths: Sequence[Path], output: Path) -> int:
    """Rows written."""
    import pandas as pd  # the `report` extra

    frames = []
    for path in paths:
        try:
            frames.append(pd.read_csv(path, dtype=str, keep_default_na=False,
                                      encoding="utf-8-sig"))  # fmt: skip
        except FileNotFoundError:
            raise MadError(f"{path}: no such file") from None
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise MadError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    merged = pd.concat(frames, ignore_index=True, sort=False).fillna("")
    output.parent.mkdir(parents=True, exist_ok=True)
    merged.to_csv(output, index=False)
    return len(merged)

"""How numbers are written where madengine's users read them (perf.csv, JUnit)."""

import pytest

from pytest_madengine.units import exact_number


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (1234567.891, "1234567.891"),  # `:g` wrote 1.23457e+06: three digits lost
        (900.0, "900"),
        (0.000012, "1.2e-05"),
        (123456789012.0, "123456789012"),
        (-3.25, "-3.25"),
        (float("inf"), "inf"),
    ],
)
def test_a_number_keeps_every_digit_it_was_measured_with(value: float, written: str) -> None:
    assert exact_number(value) == written
    assert float(written) == value

"""bitsmith.table.format_table: the text tables every report prints."""

from bitsmith.table import format_number, format_table


def test_columns_are_aligned_and_numbers_right_aligned():
    text = format_table(["Layer", "Score"], [("conv1", 12.5), ("features.10.conv", 3.25)])
    lines = text.splitlines()
    assert len({len(line) for line in lines if set(line) != {"-"}}) == 1
    assert lines[-1].endswith(" 3.25") and lines[-2].endswith("12.50")


def test_small_floats_keep_significant_digits():
    text = format_table(["Metric", "Value"], [("mse", 1.7406e-05), ("zero", 0.0), ("psnr", 31.416)])
    assert "1.74e-05" in text
    assert " 0.00" in text and "31.42" in text


def test_nan_and_infinities_print_as_words():
    text = format_table(["a", "b", "c"], [(float("nan"), float("inf"), float("-inf"))])
    assert text.splitlines()[-1].split() == ["-", "inf", "-inf"]


def test_format_number_is_what_reports_use():
    assert format_number(41.0) == "41.00" and format_number(0.0) == "0.00"
    assert format_number(-3.2e-4) == "-0.00032" and format_number(float("nan")) == "-"

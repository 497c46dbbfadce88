"""Schema and range checks of current data against a reference sketch: departures are counted per column, a
schema that does not match is bad input naming the file and column."""

import numpy as np
import pytest

from aisec.core.errors import BadInputError
from aisec.defend.data_validation.records import Column, Records, records_from_arrays
from aisec.defend.data_validation.reference_sketch import build_sketch
from aisec.defend.data_validation.schema_check import check_schema


def table(path, **columns):
    cols = tuple(
        Column(name, "categorical" if values.dtype == object else "numeric", values)
        for name, values in columns.items()
    )
    return Records(path, cols, None, None, None, None, None, None, None)


def sketch_of(records):
    return build_sketch(records, generator=np.random.default_rng(0))


def test_departures_are_counted_per_column():
    generator = np.random.default_rng(0)
    age = generator.integers(18, 90, 1000).astype(float)
    income = generator.normal(50, 10, 1000)
    colour = np.array(generator.choice(["red", "green"], 1000), dtype=object)
    reference = table("ref.csv", age=age, income=income, colour=colour)
    new_age = age.copy()
    new_age[:20] = 120  # 2 % above the reference's range
    new_age[20:30] = 30.5  # fractions in a whole-number column
    new_income = income.copy()
    new_income[:100] = np.nan  # 10 % missing, none before
    new_colour = colour.copy()
    new_colour[:5] = "purple"
    check = check_schema(
        sketch_of(reference), table("cur.csv", age=new_age, income=new_income, colour=new_colour)
    )
    by_name = {c.name: c for c in check.columns}
    assert by_name["age"].above == 20 and by_name["age"].below == 0 and by_name["age"].fractional == 10
    assert by_name["age"].out_of_range_rate == pytest.approx(0.02)
    assert by_name["income"].current_missing_rate == pytest.approx(
        0.1
    ) and check.max_missing_increase == pytest.approx(0.1)
    assert by_name["colour"].unseen == ("purple",) and by_name["colour"].unseen_rate == pytest.approx(0.005)
    assert len(check.issues()) == 4  # age: range and fractions; income: missing; colour: unseen


def test_the_same_data_has_no_issues():
    generator = np.random.default_rng(1)
    records = records_from_arrays(generator.standard_normal((500, 4)))
    check = check_schema(sketch_of(records), records)
    assert check.issues() == [] and check.max_out_of_range_rate == 0


@pytest.mark.parametrize(
    ("current", "named"),
    [
        ({"a": np.zeros(10)}, "'b'"),  # a column missing
        ({"a": np.zeros(10), "b": np.zeros(10), "c": np.zeros(10)}, "'c'"),  # a column added
        ({"a": np.zeros(10), "b": np.array(["x"] * 10, dtype=object)}, "'b'"),  # another kind
    ],
)
def test_a_schema_that_does_not_match_is_bad_input_naming_file_and_column(current, named):
    reference = table("ref.csv", a=np.arange(10.0), b=np.arange(10.0))
    with pytest.raises(BadInputError, match=rf"cur\.csv: .*{named}"):
        check_schema(sketch_of(reference), table("cur.csv", **current))


def test_images_of_another_shape_are_bad_input():
    generator = np.random.default_rng(2)
    reference = records_from_arrays(generator.random((50, 8, 8)), path="ref.npz")
    with pytest.raises(BadInputError, match=r"cur\.npz: image records of shape \(6, 6\)"):
        check_schema(sketch_of(reference), records_from_arrays(generator.random((50, 6, 6)), path="cur.npz"))

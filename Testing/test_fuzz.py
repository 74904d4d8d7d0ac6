"""Any JSON value a job file or a label-map option can hold gives a valid job or a clean error, never
another exception (Hypothesis draws the values)."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from CardiacUDALib.errors import InputDataError
from CardiacUDALib.io import parse_label_map
from CardiacUDALib.jobs import JOB_TYPES, parse_job

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELD_NAMES = sorted({item.name for kind in JOB_TYPES.values() for item in dataclasses.fields(kind)})
# objects that look like jobs: a real task (or not) and real field names with any values, so that the
# draws reach the checks of every field, not only the first one
JOB_LIKE = st.fixed_dictionaries(
    {"task": st.sampled_from([*JOB_TYPES, "nosuchtask"])},
    optional={name: JSON_VALUES for name in FIELD_NAMES},
)
CASE_LIKE = st.fixed_dictionaries(
    {"task": st.just("segment"), "checkpoint": st.text(min_size=1, max_size=8), "out_dir": st.just("o")},
    optional={
        "cases": st.lists(st.dictionaries(st.sampled_from(["name", "image", "label", "x"]), JSON_VALUES))
    },
)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.one_of(JSON_VALUES, JOB_LIKE, CASE_LIKE))
def test_any_json_value_is_a_job_or_a_clean_error(value):
    try:
        job = parse_job(value)
    except InputDataError:
        return
    assert parse_job(job.to_dict()) == job  # a job that parses writes itself back to the same job


@FUZZ
@given(
    st.one_of(
        st.text(max_size=30), st.from_regex(r"-?[0-9]{1,6}:[A-Za-z]{0,4}(,-?[0-9]{1,6}:[A-Za-z]{0,4}){0,3}")
    )
)
def test_any_label_map_text_is_a_label_map_or_a_clean_error(text):
    try:
        label_map = parse_label_map(text)
    except InputDataError:
        return
    assert len(label_map.values) == len(label_map.class_names) >= 1
    assert all(1 <= value <= 65535 for value in label_map.values)

"""A request's features: what the store keeps of them, and what the opening process keeps."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np

from apportion import Agent, Controller, Pipeline
from apportion.features import MAX_FEATURES_TEXT, features_note, storable

PIPELINE = Pipeline([Agent("reader"), Agent("writer", after=["reader"])])


def test_numbers_of_other_types_are_kept_as_json_numbers_and_the_rest_left_out() -> None:
    given = {
        "n": np.int64(3),
        "x": np.float32(1.5),
        "third": Fraction(1, 3),
        "huge": Fraction(10**400),  # no float holds it
        "big": 2**64,  # past 64 bits
        "list": [1, 2],
        "odd": "\ud800",  # not valid text
        "tier": "gold",
        "flag": True,
        "none": None,
    }
    kept = storable(given)
    assert kept == {"n": 3, "x": 1.5, "third": 1 / 3, "tier": "gold", "flag": True, "none": None}
    assert [type(kept[k]) for k in ("n", "x")] == [int, float]
    assert json.loads(features_note(kept)) == kept


def test_what_the_store_keeps_is_bounded_and_the_opening_process_keeps_everything() -> None:
    long = {f"f{i:03}": "y" * 1_000 for i in range(100)}
    kept = storable(long)
    assert len(features_note(kept)) <= MAX_FEATURES_TEXT
    assert list(kept) == list(long)[: len(kept)] and 60 <= len(kept) < 100
    for size in range(MAX_FEATURES_TEXT - 20, MAX_FEATURES_TEXT + 3):  # at the bound
        one = storable({"a": "y" * size})
        assert one == {} or len(features_note(one)) <= MAX_FEATURES_TEXT
    controller = Controller(PIPELINE, policy="estimate")
    with controller.request(1_000, {**long, "thread": [1, 2]}) as req:
        assert controller.attach(req.request_id).begin("reader", 10)  # a handle plans too
        assert controller.store.features(req.request_id) == kept
        assert req._steps.obs.features == {**long, "thread": [1, 2]}  # its own policy's

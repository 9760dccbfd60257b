"""Predictions kept for a request are the model's own until the model learns more."""

from __future__ import annotations

from apportion import Agent, Controller, EstimatePolicy, Pipeline


def test_a_kept_prediction_moves_when_the_need_model_does() -> None:
    pipeline = Pipeline([Agent("reader"), Agent("writer", after=["reader"])])
    policy = EstimatePolicy()
    controller = Controller(pipeline, policy=policy)
    writer = pipeline["writer"]
    with controller.request(ceiling=50_000) as req:
        obs = req._steps.obs
        model = policy._model(obs)
        first = policy.predicted_output(obs, writer, 800)
        assert policy.predicted_output(obs, writer, 800) == first  # kept
        version = model.version
        # another request of the same pipeline settles, with answers far longer than the prior
        model.observe({}, [("writer", 800, 4_000, False)] * 40)
        assert model.version > version
        moved = policy.predicted_output(obs, writer, 800)
        assert moved == policy._predict_output(obs, model, writer, 800, False)
        assert abs(moved - 4_000) < abs(first - 4_000)  # the memo did not hide what was learned
        grant = req.begin("reader", input_tokens=100)
        req.finish(grant, input_tokens=100, output_tokens=10)

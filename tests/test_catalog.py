"""The model catalog, the cost path of the controller, and the ``routed`` policy."""

from __future__ import annotations

import dataclasses

import pytest

from apportion import Agent, Controller, MemoryStore, Pipeline
from apportion.catalog import LITELLM, Catalog, ModelInfo, bundled_cost_map
from apportion.errors import CostExceeded, InvalidPrice, UnknownModel

NEEDS_MAP = pytest.mark.skipif(not bundled_cost_map(), reason="LiteLLM's cost map absent")

LARGE = ModelInfo(
    "large",
    3.0,
    15.0,
    context_window=200_000,
    max_output=8192,
    capability={"structured": 1.0, "prose": 1.0, "reasoning": 1.0},
)
SMALL = ModelInfo(
    "small",
    0.15,
    0.6,
    context_window=128_000,
    max_output=16_384,
    capability={"structured": 0.97, "prose": 0.88, "reasoning": 0.55},
)


def _write(tmp_path, text: str):
    path = tmp_path / "models.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------ catalog


@NEEDS_MAP
def test_yaml_overrides_litellm_field_by_field(tmp_path):
    path = _write(
        tmp_path,
        "models:\n"
        "  - name: gpt-4o-mini\n"
        "    input_price: 1.0\n"
        "    capability: {structured: 0.9}\n"
        "  - name: my-llama\n"
        "    input_price: 0.2\n"
        "    output_price: 0.6\n"
        "    context_window: 32000\n",
    )
    catalog = Catalog.from_yaml(path)
    base = Catalog().get("gpt-4o-mini")
    over = catalog.get("gpt-4o-mini")
    assert over.input_price == 1.0
    assert over.output_price == base.output_price  # kept from LiteLLM
    assert over.context_window == base.context_window
    assert over.capable("structured") == 0.9 and over.capable("prose") == 1.0
    assert over.source == f"{path} over {LITELLM}"
    own = catalog.get("my-llama")
    assert (own.input_price, own.context_window, own.source) == (0.2, 32_000, str(path))
    assert own.cost(1_000_000, 1_000_000) == pytest.approx(0.8)
    assert [m.name for m in catalog.routable()] == ["gpt-4o-mini"]


def test_unknown_model_names_the_catalogs_searched(tmp_path):
    path = _write(tmp_path, "models:\n  - {name: mine, input_price: 1, output_price: 2}\n")
    with pytest.raises(UnknownModel) as caught:
        Catalog.from_yaml(path).get("nowhere-model")
    assert caught.value.model == "nowhere-model"
    assert str(path) in str(caught.value) and LITELLM in str(caught.value)
    with pytest.raises(UnknownModel, match=r"not in user catalog$"):
        Catalog([ModelInfo("mine", 1.0, 2.0)], litellm=False).get("other")
    assert Catalog(litellm=False).searched == ["user catalog"]


def test_negative_prices_are_refused(tmp_path):
    with pytest.raises(InvalidPrice):
        ModelInfo("bad", -1.0, 2.0)
    path = _write(tmp_path, "models:\n  - {name: bad, input_price: 1, output_price: -2}\n")
    with pytest.raises(InvalidPrice):
        Catalog.from_yaml(path)


def test_capability_with_unknown_output_kinds_is_refused(tmp_path):
    with pytest.raises(InvalidPrice, match="unknown output kind 'poetry'"):
        ModelInfo("m", 1.0, 1.0, capability={"poetry": 0.5})
    with pytest.raises(InvalidPrice, match=r"capability is a number in \[0, 1\]"):
        ModelInfo("m", 1.0, 1.0, capability={"prose": 1.5})
    path = _write(tmp_path, "models:\n  - {name: m, capability: {haiku: 1}}\n")
    with pytest.raises(InvalidPrice, match="haiku"):
        Catalog.from_yaml(path)


def _pipeline(model: str | None = None) -> Pipeline:
    return Pipeline(
        [
            Agent("triage", priority="peripheral", output_kind="structured", model=model),
            Agent(
                "reasoner",
                priority="critical",
                after=["triage"],
                output_kind="reasoning",
                model=model,
            ),
            Agent(
                "formatter",
                priority="peripheral",
                after=["reasoner"],
                output_kind="structured",
                model=model,
            ),
        ]
    )


def test_absent_prices_with_a_cost_ceiling_are_a_clear_error():
    catalog = Catalog([ModelInfo("unpriced")], litellm=False)
    ctl = Controller(_pipeline(), policy="elastic", store=MemoryStore(), catalog=catalog)
    with ctl.request(ceiling=10_000, ceiling_usd=1.0) as req:
        with pytest.raises(InvalidPrice, match=r"'unpriced'.*no input/output price"):
            req.begin("triage", 100, 50, model="unpriced")
        with pytest.raises(UnknownModel, match="'missing'"):
            req.begin("triage", 100, 50, model="missing")
        with pytest.raises(InvalidPrice, match="needs the call's model"):
            req.begin("triage", 100, 50)
    # without a cost ceiling an unpriced or unknown model is only recorded
    with ctl.request(ceiling=10_000) as req:
        assert req.begin("triage", 100, 50, model="missing").model == "missing"


# ---------------------------------------------------------------- the cost path


def _priced(policy: str = "elastic") -> Controller:
    return Controller(
        _pipeline("small"),
        policy=policy,
        store=MemoryStore(),
        catalog=Catalog([LARGE, SMALL], litellm=False),
    )


def test_a_cost_ceiling_below_the_cheapest_call_says_the_minimum():
    ctl = _priced()
    with pytest.raises(InvalidPrice, match=r"cheapest possible call, 0\.000000750 USD"):
        ctl.request(ceiling=10_000, ceiling_usd=0.0000005)
    with pytest.raises(InvalidPrice, match="positive number"):
        ctl.request(ceiling=10_000, ceiling_usd=-1.0)


def test_a_grant_that_could_break_the_cost_ceiling_is_refused():
    ctl = _priced()
    with ctl.request(ceiling=100_000, ceiling_usd=0.003) as req:
        # 2,000 input and 4,000 output on "small": 0.0003 + 0.0024 = 0.0027 USD
        req.release(req.begin("triage", 2_000, 4_000, model="small"))
        # 1,000 input and 200 output on "large": 0.003 + 0.003 = 0.006 USD > 0.003
        with pytest.raises(CostExceeded) as caught:
            req.begin("triage", 1_000, 200, model="large")
        error = caught.value
        assert error.agent == "triage" and error.model == "large"
        assert error.requested_usd == pytest.approx(0.006)
        assert error.available_usd == pytest.approx(0.003)
        # a smaller one fits, and is charged at what it used
        grant = req.begin("triage", 1_000, 500, model="small")
        req.finish(grant, input_tokens=1_000, output_tokens=300)
        grant = req.begin("reasoner", 200, 100, model="large")
        req.finish(grant, input_tokens=200, output_tokens=100)
        summary = req.summary()
    assert summary.agents["triage"].cost_usd == pytest.approx(0.00015 + 0.00018)
    assert summary.agents["reasoner"].cost_usd == pytest.approx(0.0006 + 0.0015)
    assert summary.agents["formatter"].cost_usd == 0.0
    assert summary.cost_usd == pytest.approx(0.00033 + 0.0021)
    assert summary.ceiling_usd == pytest.approx(0.003)
    assert "cost" in str(summary)


def test_a_cap_too_dear_for_the_cost_left_is_lowered_not_refused():
    # uniform gives each agent a third of 30,000 tokens: its answer may fill what its
    # input leaves of the share. On "large" a full share of output costs 0.15 USD at full
    # size; the request may spend 0.05 in all. The routing workload's formatter was
    # refused in every request this way, with a third of the cost ceiling left.
    ctl = _priced("uniform")
    with ctl.request(ceiling=30_000, ceiling_usd=0.05) as req:
        for agent, inp, wrote in (("triage", 500, 100), ("reasoner", 2_000, 900)):
            grant = req.begin(agent, inp, model="large")
            assert grant.context_tokens == inp  # the input is read whole
            left = 0.05 - req.summary().cost_usd
            full = (grant.context_tokens * 3.0 + grant.output_tokens * 15.0) / 1e6
            assert full <= left + 1e-9
            assert grant.output_tokens > wrote
            req.finish(grant, input_tokens=inp, output_tokens=wrote)
        state = ctl.store.get(req.request_id)
        spent = state.cost_consumed
        grant = req.begin("formatter", 800, model="large")
        # the cap is what the cost left pays for beside the input, to the token
        left = 50_000_000 - spent
        assert grant.output_tokens == (left - 800 * 3_000) // 15_000
        req.finish(grant, input_tokens=800, output_tokens=400)
        assert req.summary().cost_usd <= 0.05
    # the input alone is dearer than the cost left: refused, naming the grant's full cost
    with ctl.request(ceiling=30_000, ceiling_usd=0.01) as req, pytest.raises(CostExceeded):
        req.begin("triage", 4_000, model="large")


# ------------------------------------------------------------------------ routed


def _route(ceiling: int, ceiling_usd: float | None) -> dict[str, str | None]:
    ctl = _priced("routed")
    chosen: dict[str, str | None] = {}
    with ctl.request(ceiling=ceiling, ceiling_usd=ceiling_usd) as req:
        for agent, inp in (("triage", 300), ("reasoner", 1_200), ("formatter", 400)):
            grant = req.begin(agent, inp, None)
            chosen[agent] = grant.model
            assert grant.model is not None
            used = grant.output_tokens // 2
            req.finish(grant, input_tokens=grant.context_tokens, output_tokens=used)
        summary = req.summary()
    assert summary.consumed <= ceiling
    if ceiling_usd is not None:
        assert summary.cost_usd <= ceiling_usd + 1e-12
    return chosen


def test_routed_buys_the_capable_model_for_the_critical_agent():
    chosen = _route(40_000, 0.1)
    assert chosen == {"triage": "small", "reasoner": "large", "formatter": "small"}


def test_routed_under_a_tight_cost_ceiling_stays_within_it():
    chosen = _route(40_000, 0.0015)
    assert chosen["triage"] == "small" and chosen["formatter"] == "small"


def test_routed_without_a_cost_ceiling_and_without_models():
    assert _route(40_000, None)["reasoner"] == "large"
    ctl = Controller(_pipeline(), policy="routed", store=MemoryStore(), catalog=Catalog())
    with ctl.request(ceiling=10_000) as req:
        grant = req.begin("triage", 100, None)
        assert grant.model is None and grant.output_tokens > 0


def test_routed_cost_weight_prices_cost_and_is_checked():
    from apportion.errors import PolicyConfigError
    from apportion.policies import RoutedPolicy

    assert RoutedPolicy().cost_weight == 2.0
    with pytest.raises(PolicyConfigError, match="cost_weight"):
        RoutedPolicy(cost_weight=-1.0)

    # typical sizes declared, so that the plan weighs known needs rather than the prior
    typical = {"triage": (500, 50), "reasoner": (5_000, 1_000), "formatter": (1_500, 300)}
    pipeline = Pipeline(
        [
            dataclasses.replace(
                a, typical_input=typical[a.name][0], typical_output=typical[a.name][1]
            )
            for a in _pipeline().agents
        ]
    )

    def models(policy: RoutedPolicy) -> list[str | None]:
        ctl = Controller(
            pipeline, policy=policy, store=MemoryStore(), catalog=Catalog([LARGE, SMALL])
        )
        with ctl.request(ceiling=40_000, ceiling_usd=0.1) as req:
            grant = req.begin("formatter", 400, None)
            return [grant.model]

    # quality alone (weight 0) buys the large model for a peripheral structured agent;
    # a price on cost gives it the small one, 0.97 as capable at a twentieth of the price
    assert models(RoutedPolicy(cost_weight=0.0)) == ["large"]
    assert models(RoutedPolicy()) == ["small"]

"""A three-agent pipeline (triage, reasoner, formatter) through LiteLLM, under one ceiling.

Every model call goes through ``req.completion(...)``: the messages are counted, a grant is
begun, the messages are fitted into it, ``max_tokens`` is set from it, the real usage is
read back and the grant is settled. The reasoner asks for at most 150 output tokens per
call, so a long answer is cut at its cap; apportion then asks the ``elastic`` policy to
extend the grant and continues the answer in follow-up calls, and the ceiling holds
across all of it.

Which model it runs against:

* ``APPORTION_MODEL`` if set (any LiteLLM model name; its provider's key must be set), else
  ``gpt-4o-mini`` if ``OPENAI_API_KEY`` is set, else ``anthropic/claude-haiku-4-5`` if
  ``ANTHROPIC_API_KEY`` is set;
* otherwise (or with ``--local``) a local server speaking the OpenAI chat-completions
  protocol, started by this script on a loopback port
  (:class:`apportion.testing.openai_server.OpenAIServer`), with scripted answers: nothing
  leaves the machine.

For a model with no tokenizer apportion knows, set ``APPORTION_COUNTER=approximate``.

Run from the repository root:  python examples/litellm_pipeline.py [--local]
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the cost map

from apportion import Agent, Controller, Pipeline
from apportion.integrations import CallReport
from apportion.testing.openai_server import OpenAIServer, Reply

CEILING = 2_000
REASONER_CAP = 150

TICKET = (
    "Our nightly export to the data warehouse has failed three nights in a row since we "
    "rotated the database password. The job logs say 'authentication failed' on the "
    "second step only. What should we check, in order?"
)

# What the local server answers, in order: triage, reasoner (long: cut, then continued),
# formatter. The server cuts an answer at max_tokens words and serves the rest to the
# follow-up call that asks to continue.
LOCAL_ANSWERS = [
    '{"category": "integration", "urgency": "high", "component": "export"}',
    " ".join(
        [
            "Step one: the export runs in two steps, and only the second fails, so the",
            "first step already uses the new password while the second still reads the",
            "old one from somewhere else. Check where the second step gets its",
            "credentials: a separate connection profile, an environment variable on the",
            "worker, a secrets-manager entry with its own cache, or a copy of the",
            "connection string in the warehouse loader's configuration. Step two: look",
            "for a cached session or a connection pool that outlived the rotation; a",
            "restart of the worker clears it. Step three: confirm the new password has",
            "the same grants as the old one on the target schema, since a role created",
            "for the rotation may lack the write permission the loader needs. Step four:",
            "check whether the password contains characters that the loader's",
            "configuration format escapes differently, such as a percent sign or a",
            "dollar sign, which would corrupt it only in that step. Step five: run the",
            "second step by hand with verbose logging to see which user and which host",
            "it authenticates as, and compare with the first step. Step six: once",
            "fixed, rotate through the secrets manager only, so every step reads the",
            "same source, and add an alert on the first authentication failure.",
        ]
    ),
    "1. Find where step two reads its credentials. 2. Restart the worker. "
    "3. Check the new role's grants. 4. Check escaping. 5. Rerun step two verbosely.",
]

PIPELINE = Pipeline(
    [
        Agent("triage", priority="peripheral", output_kind="structured"),
        Agent("reasoner", priority="critical", after=["triage"], output_kind="reasoning"),
        Agent("formatter", priority="peripheral", after=["reasoner"], output_kind="structured"),
    ]
)


def real_model() -> str | None:
    """The model to call for real, or ``None`` to use the local server."""
    if "--local" in sys.argv[1:]:
        return None
    if os.environ.get("APPORTION_MODEL"):
        return os.environ["APPORTION_MODEL"]
    if os.environ.get("OPENAI_API_KEY"):
        return "gpt-4o-mini"
    if os.environ.get("ANTHROPIC_API_KEY"):
        return "anthropic/claude-haiku-4-5"
    return None


@contextlib.contextmanager
def model_settings() -> Iterator[dict[str, Any]]:
    """LiteLLM arguments for the model: a real one, or the local server started here."""
    model = real_model()
    counter = os.environ.get("APPORTION_COUNTER") or None
    if model is not None:
        print(f"model: {model} (real calls)")
        yield {"model": model, "counter": counter}
        return
    with OpenAIServer([Reply(text) for text in LOCAL_ANSWERS]) as server:
        print(f"model: openai/gpt-4o-mini on the local server at {server.url}")
        yield {
            "model": "openai/gpt-4o-mini",
            "api_base": server.url,
            "api_key": "local",
            "max_retries": 0,
            "counter": counter,
        }


def show(report: CallReport) -> None:
    grant = report.grant
    assert grant is not None
    cost = "n/a" if report.cost_usd is None else f"${report.cost_usd:.6f}"
    print(
        f"  {report.agent:<9} grant {grant.context_tokens} in / {grant.output_tokens} out; "
        f"used {report.input_tokens} in / {report.output_tokens} out in {report.calls} "
        f"call(s), {report.extensions} extension(s); finish={report.finish_reason}, "
        f"truncated={report.truncated}, cost {cost}"
        + (" (usage estimated)" if report.usage_estimated else "")
    )


def main() -> int:
    controller = Controller(PIPELINE, policy="elastic")
    with model_settings() as settings, controller.request(CEILING, {"messages": 1}) as req:
        triage = req.completion(
            "triage",
            messages=[
                {"role": "system", "content": "Classify the ticket. Answer with JSON only."},
                {"role": "user", "content": TICKET},
            ],
            **settings,
        )
        show(triage.apportion)
        reasoner = req.completion(
            "reasoner",
            messages=[
                {"role": "system", "content": "You are a senior SRE. Think step by step."},
                {"role": "user", "content": TICKET},
                {"role": "assistant", "content": triage.choices[0].message.content},
                {"role": "user", "content": "Explain, step by step, what to check and why."},
            ],
            max_tokens=REASONER_CAP,
            **settings,
        )
        show(reasoner.apportion)
        formatter = req.completion(
            "formatter",
            messages=[
                {"role": "system", "content": "Turn the analysis into a short numbered list."},
                {"role": "user", "content": reasoner.choices[0].message.content},
            ],
            **settings,
        )
        show(formatter.apportion)
        print("\nanswer:\n" + formatter.choices[0].message.content + "\n")
        extended = reasoner.apportion.extensions > 0 and not reasoner.apportion.truncated
        print(
            f"reasoner: cut at {REASONER_CAP} tokens, extended {reasoner.apportion.extensions} "
            f"time(s), {'completed' if extended else 'not completed'}"
        )
    summary = req.summary()
    print(summary)
    held = summary.consumed <= CEILING
    print(f"ceiling held: consumed {summary.consumed} <= {CEILING}: {held}")
    return 0 if held else 1


if __name__ == "__main__":
    raise SystemExit(main())

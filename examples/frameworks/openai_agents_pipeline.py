"""A three-agent OpenAI Agents SDK pipeline under one apportion ceiling.

triage classifies a ticket; the reasoner reads the ticket's 40-message support thread
(more than its grant holds: apportion fits it, keeping the most recent turns) and answers
in at most 120 tokens per call: a cut answer is extended when the ceiling can pay for the
follow-up call (which re-reads the fitted thread), else it is handed on cut and reported;
the formatter turns the analysis into a list, streamed. The lines apportion adds are
marked ``# apportion``.

Which model it runs against: ``gpt-4o-mini`` when ``OPENAI_API_KEY`` is set (real calls);
otherwise (or with ``--local``) a local server speaking the OpenAI protocol, started here
on a loopback port (:class:`apportion.testing.openai_server.OpenAIServer`), with scripted
answers: nothing leaves the machine.

Run from the repository root (needs ``pip install -e ".[openai-agents]"``):
    python examples/frameworks/openai_agents_pipeline.py [--local]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator

from agents import Agent, ModelSettings, Runner, set_tracing_disabled
from openai import AsyncOpenAI

from apportion import Agent as Budgeted
from apportion import Controller, Pipeline
from apportion.integrations.openai_agents import run_config  # apportion
from apportion.testing.openai_server import OpenAIServer

CEILING = 2_000
MODEL = "gpt-4o-mini"
TICKET = (
    "Our nightly export to the data warehouse has failed three nights in a row since we "
    "rotated the database password. What should we check, in order?"
)
LOCAL_ANSWERS = [
    '{"category": "integration", "urgency": "high", "component": "export"}',
    " ".join(
        [
            "Only the second step of the export fails, so it reads the old password from",
            "somewhere the rotation did not reach: a separate connection profile, an",
            "environment variable on the worker, or a cached secrets-manager entry. Check",
            "those first. Then look for a connection pool that outlived the rotation (a",
            "worker restart clears it), confirm the new role has write grants on the",
            "target schema, check that the new password has no character the loader's",
            "configuration escapes differently, and rerun step two by hand with verbose",
            "logging to see which user it authenticates as. Once fixed, rotate through",
            "the secrets manager only so every step reads one source, and alert on the",
            "first authentication failure instead of the third.",
        ]
        * 2
    ),
    "1. Find where step two reads its credentials. 2. Restart the worker. "
    "3. Check the role's grants. 4. Check escaping. 5. Rerun step two verbosely.",
]

PIPELINE = Pipeline(
    [
        Budgeted("triage", priority="peripheral", output_kind="structured"),
        Budgeted("reasoner", priority="critical", after=["triage"], output_kind="reasoning"),
        Budgeted("formatter", priority="peripheral", after=["reasoner"], output_kind="prose"),
    ]
)


def thread(n: int = 40) -> list[dict[str, str]]:
    """The ticket's support thread: ``n`` messages, alternating customer and support."""
    turns = []
    for i in range(n):
        if i % 2 == 0:
            text = (
                f"Night {i // 2 + 1}: the export failed again at step two with 'authentication "
                "failed'. Step one finished normally. We changed nothing else on the worker, "
                "the loader or the warehouse, and the job ran at its usual time."
            )
            turns.append({"role": "user", "content": text})
        else:
            text = (
                "Thanks, we are looking at the logs of step two and at the worker's "
                "configuration; could you send the loader's connection settings, with the "
                "password removed, and the time of the last successful run?"
            )
            turns.append({"role": "assistant", "content": text})
    return [*turns, {"role": "user", "content": TICKET}]


@contextlib.contextmanager
def openai_client() -> Iterator[AsyncOpenAI]:
    """A real client when a key is set, else one for a local server started here."""
    if os.environ.get("OPENAI_API_KEY") and "--local" not in sys.argv[1:]:
        print(f"model: {MODEL} (real calls)")
        yield AsyncOpenAI()
        return
    set_tracing_disabled(True)  # no key: nowhere to send traces
    with OpenAIServer(LOCAL_ANSWERS) as server:
        print(f"model: {MODEL} on the local server at {server.url}")
        yield AsyncOpenAI(base_url=server.url, api_key="local", max_retries=0)


async def run(client: AsyncOpenAI) -> int:
    triage = Agent(name="triage", instructions="Classify the ticket. JSON only.", model=MODEL)
    reasoner = Agent(
        name="reasoner",
        instructions="You are a senior SRE. Explain what to check, in order, and why.",
        model=MODEL,
        model_settings=ModelSettings(max_tokens=120),
    )
    formatter = Agent(name="formatter", instructions="A short numbered list.", model=MODEL)
    controller = Controller(PIPELINE, policy="elastic")
    with controller.request(CEILING) as req:  # apportion
        budget = run_config(client)  # apportion
        streaming = run_config(client, use_responses=False)  # apportion: streamed runs
        kind = await Runner.run(triage, TICKET, run_config=budget)
        analysis = await Runner.run(
            reasoner,
            [*thread(), {"role": "user", "content": str(kind.final_output)}],
            run_config=budget,
        )
        listed = Runner.run_streamed(formatter, str(analysis.final_output), run_config=streaming)
        async for _ in listed.stream_events():
            pass
        print("\nanswer:\n" + str(listed.final_output) + "\n")
    summary = req.summary()
    for name, agent in summary.agents.items():
        print(
            f"  {name:<9} consumed {agent.consumed} tokens in {agent.calls} call(s); "
            f"input cut in {agent.input_cut_calls}, answer left cut in {agent.truncated_calls}"
        )
    words = len(str(analysis.final_output).split())
    print(f"reasoner: answered {words} words with at most 120 tokens per model call")
    held = summary.consumed <= CEILING
    print(f"ceiling held: consumed {summary.consumed} <= {CEILING}: {held}")
    return 0 if held else 1


def main() -> int:
    with openai_client() as client:
        return asyncio.run(run(client))


if __name__ == "__main__":
    raise SystemExit(main())

"""The support ticket the framework examples share: its thread, the local answers, the pipeline.

Imported by the ``*_pipeline.py`` scripts next to it (run as scripts, their folder is on
``sys.path``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from openai import AsyncOpenAI

from apportion import Agent, Pipeline
from apportion.testing.openai_server import OpenAIServer

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
        Agent("triage", priority="peripheral", output_kind="structured"),
        Agent("reasoner", priority="critical", after=["triage"], output_kind="reasoning"),
        Agent("formatter", priority="peripheral", after=["reasoner"], output_kind="prose"),
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
    """A real client when ``OPENAI_API_KEY`` is set (and no ``--local``), else one for a
    local server started here, answering :data:`LOCAL_ANSWERS`."""
    if os.environ.get("OPENAI_API_KEY") and "--local" not in sys.argv[1:]:
        print(f"model: {MODEL} (real calls)")
        yield AsyncOpenAI()
        return
    with OpenAIServer(LOCAL_ANSWERS) as server:
        print(f"model: {MODEL} on the local server at {server.url}")
        yield AsyncOpenAI(base_url=server.url, api_key="local", max_retries=0)


def report(req: object, ceiling: int, reasoner_answer: str, cap: int) -> int:
    """Print what each agent consumed; 0 when the ceiling held."""
    summary = req.summary()  # type: ignore[attr-defined]
    for name, agent in summary.agents.items():
        print(
            f"  {name:<9} consumed {agent.consumed} tokens in {agent.calls} call(s); "
            f"input cut in {agent.input_cut_calls}, answer left cut in {agent.truncated_calls}"
        )
    words = len(reasoner_answer.split())
    print(f"reasoner: answered {words} words with at most {cap} tokens per model call")
    held = summary.consumed <= ceiling
    print(f"ceiling held: consumed {summary.consumed} <= {ceiling}: {held}")
    return 0 if held else 1

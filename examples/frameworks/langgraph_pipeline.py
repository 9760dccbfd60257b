"""A three-node LangGraph pipeline (triage, reasoner, formatter) under one token ceiling.

A ``StateGraph`` whose three nodes call one chat model wrapped by apportion's
``budgeted(...)``; the graph runs inside one ``controller.request(...)``, so every model call
of every node is counted, granted to the node (its name is the agent), fitted, capped and
settled against the same ceiling. The reasoner reads a 40-message support history and
asks for at most 150 output tokens per call: its answer is cut at the cap and continued by
a follow-up call (the elastic policy extends the grant). The graph is streamed
(``stream_mode="messages"``): the formatter's tokens are printed as they come.

Which model it runs against: ``gpt-4o-mini`` when ``OPENAI_API_KEY`` is set; otherwise
(or with ``--local``) a local server speaking the OpenAI chat-completions protocol,
started here on a loopback port with scripted answers: nothing leaves the machine.

Run from the repository root:  python examples/frameworks/langgraph_pipeline.py [--local]
(Not named ``langgraph.py``: a script of that name would shadow the package.)
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph

from apportion import Agent, Controller, Pipeline
from apportion.integrations.langgraph import budgeted
from apportion.testing.openai_server import OpenAIServer, Reply

CEILING = 6_000
REASONER_CAP = 150

PIPELINE = Pipeline(
    [
        Agent("triage", priority="peripheral", output_kind="structured"),
        Agent("reasoner", priority="critical", after=["triage"], output_kind="reasoning"),
        Agent("formatter", priority="peripheral", after=["reasoner"], output_kind="prose"),
    ]
)

TICKET = "I was billed twice for my March invoice and the refund I was promised never came."

# A 40-message support history the reasoner reads (20 customer turns, 20 agent turns).
HISTORY: list[Any] = []
for turn in range(20):
    HISTORY.append(
        HumanMessage(
            f"Message {turn + 1} from the customer: invoice INV-{1000 + turn} shows a charge "
            f"of {20 + turn} dollars on card ending 4242, and I do not recognise it."
        )
    )
    HISTORY.append(
        AIMessage(
            f"Reply {turn + 1}: thank you, I have checked invoice INV-{1000 + turn}; the charge "
            "is for the monthly plan, and I have noted your question for the billing team."
        )
    )

LOCAL_ANSWERS = [
    '{"category": "billing", "urgency": "high", "topic": "double charge and missing refund"}',
    " ".join(
        [
            "First, the history shows the customer was charged for the monthly plan on every",
            "invoice from INV-1000 to INV-1019, and each reply only acknowledged the charge",
            "without checking for duplicates. Second, the March invoice appears twice in the",
            "payment processor's log if the retry after the card update succeeded while the",
            "first attempt was still pending, which is the usual cause of a double charge.",
            "Third, the promised refund was never issued because the ticket was noted for",
            "the billing team but never escalated with a refund request. Fourth, the right",
            "action is to confirm the duplicate in the processor, refund the second charge",
            "in full, reply with the refund reference, and add a check so that retries do",
            "not run while a payment is pending. Fifth, apologise for the delay and offer",
            "a credit for the month, since the customer asked twenty times without an",
            "answer that addressed the question.",
        ]
    ),
    "1. Confirm the duplicate March charge. 2. Refund it in full. 3. Send the refund "
    "reference. 4. Stop retries while a payment is pending. 5. Offer a month's credit.",
]


@contextlib.contextmanager
def chat_models() -> Iterator[tuple[str, dict[str, Any]]]:
    """Arguments of ``ChatOpenAI``: the real API, or the local server started here."""
    if os.environ.get("OPENAI_API_KEY") and "--local" not in sys.argv[1:]:
        yield "gpt-4o-mini (real calls)", {"model": "gpt-4o-mini"}
        return
    with OpenAIServer([Reply(text) for text in LOCAL_ANSWERS]) as server:
        local = {"model": "gpt-4o-mini", "base_url": server.url, "api_key": "local"}
        yield f"gpt-4o-mini on the local server at {server.url}", local


class State(MessagesState):
    label: str
    analysis: str


def build(llm: Any) -> Any:
    """triage -> reasoner (reads the history) -> formatter, one budgeted model for all."""
    reasoner_llm = llm.bind(max_tokens=REASONER_CAP)  # the most the reasoner asks per call

    def triage(state: State) -> dict[str, Any]:
        prompt = SystemMessage("Classify the ticket. Answer with JSON only.")
        return {"label": llm.invoke([prompt, HumanMessage(TICKET)]).text}

    def reasoner(state: State) -> dict[str, Any]:
        prompt = SystemMessage("You are a senior billing specialist. Think step by step.")
        ask = HumanMessage("Explain, step by step, what went wrong and what to do.")
        thread = [prompt, *state["messages"], AIMessage(state["label"]), ask]
        return {"analysis": reasoner_llm.invoke(thread).text}

    def formatter(state: State) -> dict[str, Any]:
        prompt = SystemMessage("Turn the analysis into a short numbered list.")
        return {"messages": [llm.invoke([prompt, HumanMessage(state["analysis"])])]}

    graph = StateGraph(State)
    graph.add_node("triage", triage)
    graph.add_node("reasoner", reasoner)
    graph.add_node("formatter", formatter)
    graph.add_edge(START, "triage")
    graph.add_edge("triage", "reasoner")
    graph.add_edge("reasoner", "formatter")
    graph.add_edge("formatter", END)
    return graph.compile()


def main() -> int:
    controller = Controller(PIPELINE, policy="elastic")
    with chat_models() as (where, model), controller.request(CEILING) as req:
        print(f"model: {where}")
        graph = build(budgeted(ChatOpenAI(max_retries=0, **model)))
        answer = ""
        state = {"messages": [*HISTORY, HumanMessage(TICKET)]}
        for chunk, meta in graph.stream(state, stream_mode="messages"):
            if meta.get("langgraph_node") == "formatter" and isinstance(chunk, AIMessage):
                answer += chunk.text

        for record in req.calls.values():
            print(
                f"  {record.agent:<9} asked {record.input_asked} in; granted "
                f"{record.context_granted} in / {record.output_cap} out; used "
                f"{record.input_used} in / {record.output_used} out; "
                f"{record.extensions} extension(s), truncated={record.truncated}"
            )
        print("\nanswer:\n" + answer + "\n")
    summary = req.summary()
    print(summary)
    held = summary.consumed <= CEILING
    print(f"ceiling held: consumed {summary.consumed} <= {CEILING}: {held}")
    return 0 if held else 1


if __name__ == "__main__":
    raise SystemExit(main())

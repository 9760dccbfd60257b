"""An orchestrator fans out to four researchers under one token ceiling (LangGraph ``Send``).

A planner picks four topics and splits 80% of what the request can spare among four child
budgets in one atomic step (``req.fan_out``); LangGraph's ``Send`` runs one researcher
branch per topic, in parallel, each inside its own child (``with budget:``), so every model
call of a branch is granted, capped and settled against that child, never wider. What a
researcher leaves unused folds back to the request when its branch ends, and the writer,
a critical agent, reads all four notes with what is left. ``req.summary().tree()`` prints
the tree: each child's ceiling and use, rolled up into the request.

Which model it runs against: ``gpt-4o-mini`` when ``OPENAI_API_KEY`` is set; otherwise
(or with ``--local``) a local server speaking the OpenAI protocol, started on a loopback
port with scripted answers (``billing_ticket.chat_models``): nothing leaves the machine.

Run from the repository root:  python examples/frameworks/research_fanout.py [--local]
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from billing_ticket import chat_models
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from apportion import Agent, Controller, Pipeline, current_request
from apportion.integrations.langgraph import budgeted

CEILING = 6_000
QUESTION = "Why do customers churn in the first month of a subscription product?"
TOPICS = ["onboarding", "pricing", "support", "competitors"]
PIPELINE = Pipeline(
    [
        Agent("planner", priority="peripheral", output_kind="structured"),
        Agent("researcher", after=["planner"], output_kind="prose"),
        Agent("writer", priority="critical", after=["researcher"], output_kind="prose"),
    ]
)

NOTE = (
    "Evidence from cohort studies points the same way: customers who do not reach a first "
    "success in their first week leave at three times the rate of those who do, and the "
    "gap widens when the first invoice arrives before that success. The fix is to measure "
    "time to first value, remove steps before it, and follow up in person when it slips."
)
LOCAL_ANSWERS = [
    ", ".join(TOPICS),
    *[f"On {topic}: {NOTE}" for topic in TOPICS],
    "Customers churn early when they pay before they succeed: shorten the path to a first "
    "win, price after value, answer support fast, and watch what competitors promise.",
]


class Research(TypedDict, total=False):
    """The graph's state: the question, the child budgets, the notes, the report."""

    question: str
    budgets: list[Any]
    notes: Annotated[list[str], operator.add]
    report: str


def build(llm: Any) -> Any:
    """planner -> four researcher branches (``Send``), each in a child budget -> writer."""

    def planner(state: Research) -> dict[str, Any]:
        ask = [SystemMessage("Name four research topics, comma-separated."), state["question"]]
        llm.invoke(ask)  # the topics the model names; the example keeps its four fixed
        return {"budgets": current_request().fan_out(TOPICS, share=0.8)}

    def fan_out(state: Research) -> list[Send]:
        return [Send("researcher", {"budget": budget}) for budget in state["budgets"]]

    def researcher(branch: dict[str, Any]) -> dict[str, Any]:
        with branch["budget"] as budget:  # this branch's calls draw on its child budget
            ask = [SystemMessage("You are a researcher. Be concrete."), f"Research {budget.name}."]
            return {"notes": [llm.bind(max_tokens=40).invoke(ask).text]}

    def writer(state: Research) -> dict[str, Any]:
        notes = "\n\n".join(state["notes"])
        ask = [SystemMessage("Write a five-line answer from the notes."), HumanMessage(notes)]
        return {"report": llm.invoke(ask).text}

    graph = StateGraph(Research)
    graph.add_node("planner", planner)
    graph.add_node("researcher", researcher)
    graph.add_node("writer", writer)
    graph.add_edge(START, "planner")
    graph.add_conditional_edges("planner", fan_out, ["researcher"])
    graph.add_edge("researcher", "writer")
    graph.add_edge("writer", END)
    return graph.compile()


def main() -> int:
    controller = Controller(PIPELINE, policy="elastic")
    with chat_models(LOCAL_ANSWERS) as (where, model), controller.request(CEILING) as req:
        print(f"model: {where}")
        out = build(budgeted(ChatOpenAI(max_retries=0, **model))).invoke({"question": QUESTION})
        print("\nreport:\n" + out["report"] + "\n")
    summary = req.summary()
    print(summary.tree())
    held = summary.consumed <= CEILING and all(
        child.consumed <= child.ceiling for child in summary.children
    )
    print(f"ceilings held: request {summary.consumed} <= {CEILING}, each child within its own")
    return 0 if held and len(summary.children) == len(TOPICS) else 1


if __name__ == "__main__":
    raise SystemExit(main())

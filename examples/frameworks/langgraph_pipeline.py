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

from typing import Any

from billing_ticket import (
    CEILING,
    HISTORY,
    PIPELINE,
    REASONER_CAP,
    TICKET,
    chat_models,
    print_calls_and_check,
)
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph

from apportion import Controller
from apportion.integrations.langgraph import budgeted


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

    return print_calls_and_check(req, answer)


if __name__ == "__main__":
    raise SystemExit(main())

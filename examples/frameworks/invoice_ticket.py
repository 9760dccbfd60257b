"""The invoice ticket the AutoGen and CrewAI examples share: the history, the pipeline, the
local server's answers (no framework imported here: CrewAI runs in an environment of its own).
"""

from __future__ import annotations

from apportion import Agent, Pipeline

CEILING = 3_000
HISTORY = "\n".join(
    f"{'customer' if i % 2 == 0 else 'support'}: message {i} about the duplicate charge "
    f"on invoice 4471, card ending 0042, and what was said about the refund so far"
    for i in range(40)
)
PIPELINE = Pipeline(
    [
        Agent("triage", priority="peripheral", output_kind="structured"),
        Agent("reasoner", priority="critical", after=["triage"], output_kind="reasoning"),
        Agent("formatter", priority="peripheral", after=["reasoner"], output_kind="prose"),
    ]
)
LOCAL_ANSWERS = [
    '{"category": "billing", "urgency": "high"}',
    "The customer was charged twice for invoice 4471; the second charge is a retry "
    "that should have been voided. Refund it and confirm by email within two days.",
    "Refund the duplicate charge on invoice 4471 and email the customer a confirmation.",
]

"""apportion: token budgets per agent for multi-agent LLM pipelines.

One ceiling per request; a policy decides what each agent may read and write; a store keeps
the ledger atomically; unused tokens are reclaimed for the agents still to run.
"""

from apportion.controller import AsyncController, AsyncRequest, Controller, Request
from apportion.errors import (
    ApportionError,
    BudgetExceeded,
    DatabaseUnavailable,
    DuplicateRequest,
    ForeignGrant,
    GrantExpired,
    GrantSettled,
    InputTooLarge,
    InvalidCeiling,
    InvalidTokenCount,
    MissingExtra,
    NoTokenizer,
    PolicyConfigError,
    PoolExhausted,
    RequestClosed,
    SchemaVersionError,
    SpecError,
    StoreUnavailable,
    UnknownAgent,
    UnknownModel,
    UnknownPolicy,
    UnknownPool,
    UnknownRequest,
    UnknownSink,
    UnknownStore,
)
from apportion.ledger import Event, Grant, Ledger
from apportion.policies import (
    POLICIES,
    Budget,
    ElasticPolicy,
    EstimatePolicy,
    IterativePolicy,
    Observation,
    Plan,
    Policy,
    StaticPolicy,
    UniformPolicy,
)
from apportion.pools import Pool
from apportion.spec import Agent, LinearEstimator, OutputKind, Pipeline, Priority
from apportion.stores import MemoryStore, Store
from apportion.summary import AgentUsage, Summary

__version__ = "0.1.0"

__all__ = [
    "POLICIES",
    "Agent",
    "AgentUsage",
    "ApportionError",
    "AsyncController",
    "AsyncRequest",
    "Budget",
    "BudgetExceeded",
    "Controller",
    "DatabaseUnavailable",
    "DuplicateRequest",
    "ElasticPolicy",
    "EstimatePolicy",
    "Event",
    "ForeignGrant",
    "Grant",
    "GrantExpired",
    "GrantSettled",
    "InputTooLarge",
    "InvalidCeiling",
    "InvalidTokenCount",
    "IterativePolicy",
    "Ledger",
    "LinearEstimator",
    "MemoryStore",
    "MissingExtra",
    "NoTokenizer",
    "Observation",
    "OutputKind",
    "Pipeline",
    "Plan",
    "Policy",
    "PolicyConfigError",
    "Pool",
    "PoolExhausted",
    "Priority",
    "Request",
    "RequestClosed",
    "SchemaVersionError",
    "SpecError",
    "StaticPolicy",
    "Store",
    "StoreUnavailable",
    "Summary",
    "UniformPolicy",
    "UnknownAgent",
    "UnknownModel",
    "UnknownPolicy",
    "UnknownPool",
    "UnknownRequest",
    "UnknownSink",
    "UnknownStore",
    "__version__",
]

"""Routing: which agent, team or workflow answers an event, from prioritised rules and per-interface
YAML configuration."""

from dynamic_agents.routing.config import InterfaceConfig, InterfaceRouting, RoutingConfig, SessionSettings
from dynamic_agents.routing.patterns import SafePattern, UnsafePatternError, check_pattern
from dynamic_agents.routing.router import EventRouter, Explanation, RouteDecision, RuleCheck
from dynamic_agents.routing.rules import RoutingRule

__all__ = [
    "EventRouter",
    "Explanation",
    "InterfaceConfig",
    "InterfaceRouting",
    "RouteDecision",
    "RoutingConfig",
    "RoutingRule",
    "RuleCheck",
    "SafePattern",
    "SessionSettings",
    "UnsafePatternError",
    "check_pattern",
]

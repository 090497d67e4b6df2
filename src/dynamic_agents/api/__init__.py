"""The REST admin and execute API (extra ``api``): a FastAPI router hosts mount, and its client."""

from dynamic_agents.api.client import AgentsHTTPClient
from dynamic_agents.api.router import NO_AUTH, TokenVerifier, create_api_router

__all__ = ["NO_AUTH", "AgentsHTTPClient", "TokenVerifier", "create_api_router"]

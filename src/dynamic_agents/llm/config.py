"""``RouterConfig``: the LiteLLM Router's settings as validated data (from a dict or YAML).

Deployments keep secret *references* (``api_key: secret:openai:api_key``); ``build_router`` resolves
them. Every deployment gets a stable ``model_info.id`` — the one given, or one derived from the model
name and the non-secret parameters (never from a key, never from the position in the list) — so a
key rotation can swap the key of exactly that deployment. Nothing here imports litellm.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dynamic_agents._redaction import masked_url, names_a_credential
from dynamic_agents._validation import NotBoolean, shown
from dynamic_agents._yaml import safe_load, yaml_problem
from dynamic_agents.exceptions import ConfigurationError
from dynamic_agents.secrets.references import error_with_value, masked_settings, shown_reference

__all__ = [
    "HEADER_PARAMS",
    "ROUTING_STRATEGIES",
    "SECRET_PARAMS",
    "DeploymentConfig",
    "RouterConfig",
    "is_credential",
    "literal_credentials",
]

ROUTING_STRATEGIES: Final = frozenset(
    {
        "simple-shuffle",
        "least-busy",
        "usage-based-routing",
        "usage-based-routing-v2",
        "latency-based-routing",
        "cost-based-routing",
        "lar1",
    }
)
"""litellm 1.106's ``RoutingStrategyName`` (a test checks the two agree)."""

SECRET_PARAMS: Final = frozenset(
    {
        "api_key",
        "api_secret",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "anthropic_identity_token",
        "aws_web_identity_token",
        "azure_ad_token",
        "azure_password",
        "client_secret",
        "password",
        "redis_password",
        "s3_access_key_id",
        "s3_secret_access_key",
        "token",
        "valkey_password",
        "vertex_credentials",
    }
)
"""``litellm_params`` that hold credentials: never part of a derived deployment id. Also masked
and registered with the redactor in ``router_settings`` (``redis_password``: a ``litellm.Router``
keyword)."""

HEADER_PARAMS: Final = frozenset({"extra_headers", "headers"})
"""``litellm_params`` holding HTTP headers, some of which carry credentials (``Authorization``)."""


def is_credential(key: object, parent: object = None) -> bool:
    """Whether the value under ``key`` (in the mapping under ``parent``) is a credential: a
    :data:`SECRET_PARAMS` key at any depth, or a credential-named header in :data:`HEADER_PARAMS`."""
    if key in SECRET_PARAMS:
        return True
    return parent in HEADER_PARAMS and names_a_credential(key)


def literal_credentials(data: Any, *, secret: bool = False, parent: object = None) -> Iterator[str]:
    """Every credential string in ``data`` (see :func:`is_credential`, at any depth) that is not a
    reference; for ``Bearer <token>``-like values, the token alone too (errors may quote it alone)."""
    if isinstance(data, str):
        if secret and shown_reference(data) is None:
            yield data
            scheme, space, token = data.strip().partition(" ")
            if space and scheme.isalpha() and token.strip():
                yield token.strip()
    elif isinstance(data, Mapping):
        for key, value in data.items():
            yield from literal_credentials(value, secret=secret or is_credential(key, parent), parent=key)
    elif isinstance(data, list | tuple):
        for item in data:
            yield from literal_credentials(item, secret=secret)


_FallbackList = list[dict[str, list[str]]]


def _fallback_list(value: Any) -> Any:
    """Accept the design document's ``{model: [targets]}`` and litellm's ``[{model: [targets]}]``."""
    if isinstance(value, Mapping):
        return [{model: _targets(targets)} for model, targets in value.items()]
    if isinstance(value, list):
        flattened = []
        for item in value:
            if isinstance(item, Mapping):
                flattened += [{model: _targets(targets)} for model, targets in item.items()]
            else:
                flattened.append(item)
        return flattened
    return value


def _targets(value: Any) -> Any:
    """A copy of a list of targets; anything else as given, for the field's validation to refuse
    (``list()`` would raise a bare TypeError, or read a string as a list of one-letter groups)."""
    return list(value) if isinstance(value, list | tuple) else value


def _names(names: list[str]) -> str:
    """Names a config gives that are not the groups it has, as an error lists them: a key pasted
    in place of one masked."""
    return f"[{', '.join(shown(name) for name in names)}]"


def _masked(data: Any) -> Any:
    """A copy for ``repr`` (and the derived deployment id): see :func:`masked_settings`, with
    :func:`is_credential` saying which keys hold credentials."""
    return masked_settings(data, is_credential)


_ROUTING_PARAMS: Final[dict[str, tuple[str, Callable[[Any], bool]]]] = {
    "rpm": ("a positive integer", lambda value: isinstance(value, int) and value > 0),
    "tpm": ("a positive integer", lambda value: isinstance(value, int) and value > 0),
    # 0 or less takes the deployment out of every call (its semaphore never lets one through)
    "max_parallel_requests": ("a positive integer", lambda value: isinstance(value, int) and value > 0),
    # simple-shuffle's share: anything else fails every call of the group, or skews it
    "weight": (
        "a number, 0 or more",
        lambda value: isinstance(value, int | float) and math.isfinite(value) and value >= 0,
    ),
    # the lowest order of a group is tried first: compared with the others' (min)
    "order": ("an integer", lambda value: isinstance(value, int)),
}
"""``litellm_params`` the Router routes by: what each must be (said in the error), and the check
(booleans, which YAML's ``yes`` gives and Python counts as integers, are refused before it)."""


class DeploymentConfig(BaseModel):
    """One entry of ``model_list``: a model group name, litellm params and model info."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model_name: str = Field(min_length=1)
    litellm_params: dict[str, Any]
    model_info: dict[str, Any] = Field(default_factory=dict)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A credential written in the config as a literal must not reach logs through a repr.
        for name, value in super().__repr_args__():
            yield name, _masked(value) if name == "litellm_params" else value

    @field_validator("litellm_params")
    @classmethod
    def _needs_a_model(cls, params: dict[str, Any]) -> dict[str, Any]:
        model = params.get("model")
        if not isinstance(model, str) or not model:
            raise ValueError("litellm_params.model is required (e.g. 'openai/gpt-4o-mini')")
        for name, (expected, valid) in _ROUTING_PARAMS.items():
            value = params.get(name)
            if name in params and (isinstance(value, bool) or not valid(value)):
                raise ValueError(f"litellm_params.{name} must be {expected}, got {shown(value)}")
        return copy.deepcopy(params)

    @field_validator("model_info")
    @classmethod
    def _id_is_text(cls, info: dict[str, Any], validation: ValidationInfo) -> dict[str, Any]:
        """A given id is a non-empty string, or an integer (an id unquoted in YAML) taken as its
        text, as litellm's ``ModelInfo`` takes it; ``None`` is none given, as there. An empty one
        fell back to a derived id, and a boolean or a list became its ``str()``."""
        given = info.get("id")
        if given is None or (isinstance(given, int) and not isinstance(given, bool)):
            return info
        if not isinstance(given, str) or not given.strip():
            name = validation.data.get("model_name") or "gpt"
            raise ValueError(
                f"model_info.id must be a non-empty string, such as '{name}-main', got {shown(given)} "
                "(an integer is taken as its text; leave the id out, or null, to have one derived)"
            )
        return info

    @property
    def deployment_id(self) -> str:
        """``model_info.id`` if given (an integer as its text), else a hash of the model name and
        non-secret params (literal credentials elsewhere, in headers or a URL, masked)."""
        given = self.model_info.get("id")
        if given is not None:
            return str(given)
        public = _masked({k: v for k, v in self.litellm_params.items() if k not in SECRET_PARAMS})
        digest = hashlib.sha256(
            json.dumps([self.model_name, public], sort_keys=True, default=str).encode()
        ).hexdigest()
        return f"{self.model_name}-{digest[:12]}"

    def describe(self) -> str:
        return f"deployment {self.deployment_id!r} of model {self.model_name!r}"


class RouterConfig(BaseModel):
    """LiteLLM Router settings (see ``docs/llm.md``).

    ``redis_url`` (may be a secret reference) shares usage and cooldown state between workers.
    ``router_settings`` passes any other ``litellm.Router`` keyword through, its secret references
    (``redis_password: secret:redis:password``) resolved when the router is built.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model_list: tuple[DeploymentConfig, ...] = Field(min_length=1)
    fallbacks: _FallbackList = Field(default_factory=list)
    default_fallbacks: list[str] = Field(default_factory=list)
    context_window_fallbacks: _FallbackList = Field(default_factory=list)
    routing_strategy: str = "simple-shuffle"
    # strict: a number written as text ("30") is refused, as WorkerSettings refuses it (lax, it was
    # read as a number: a config's typo or quoting was never said); an int is still a float
    num_retries: Annotated[int, NotBoolean] = Field(default=2, ge=0, strict=True)
    timeout: Annotated[float | None, NotBoolean] = Field(default=None, gt=0, allow_inf_nan=False, strict=True)
    cooldown_time: Annotated[float | None, NotBoolean] = Field(
        default=None, ge=0, allow_inf_nan=False, strict=True
    )
    allowed_fails: Annotated[int | None, NotBoolean] = Field(default=None, ge=0, strict=True)
    # strict: JSON's and YAML's booleans only ("yes" in quotes, 1 and 0 were read as booleans)
    enable_tag_filtering: bool = Field(default=False, strict=True)
    enable_pre_call_checks: bool = Field(default=False, strict=True)
    redis_url: str | None = None
    router_settings: dict[str, Any] = Field(default_factory=dict)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # redis_url may hold a password; router_settings may hold literal credentials.
        for name, value in super().__repr_args__():
            if name == "redis_url" and isinstance(value, str):
                yield name, masked_url(value)
            else:
                yield name, _masked(value) if name == "router_settings" else value

    @field_validator("fallbacks", "context_window_fallbacks", mode="before")
    @classmethod
    def _normalise_fallbacks(cls, value: Any) -> Any:
        return _fallback_list(value)

    @field_validator("router_settings")
    @classmethod
    def _no_config_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        # build_router sets these from the config's own fields, which would silently replace them.
        owned = sorted(name for name in value if name in cls.model_fields)
        if owned:
            names = ", ".join(repr(name) for name in owned)
            what, it = ("is a field", "it") if len(owned) == 1 else ("are fields", "them")
            raise ValueError(
                f"{names} {what} of the router config: set {it} at the top level, not in "
                "router_settings (which passes the other litellm.Router keywords through)"
            )
        return value

    @field_validator("routing_strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in ROUTING_STRATEGIES:
            close = difflib.get_close_matches(value.lower().replace("_", "-"), ROUTING_STRATEGIES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"routing_strategy {shown(value)} is not one of {', '.join(sorted(ROUTING_STRATEGIES))}{hint}"
            )
        return value

    @model_validator(mode="after")
    def _check_references(self) -> Self:
        ids: dict[str, int] = {}
        for position, deployment in enumerate(self.model_list):
            if deployment.deployment_id in ids:
                raise ValueError(
                    f"model_list[{position}] and model_list[{ids[deployment.deployment_id]}] have the same "
                    f"deployment id {deployment.deployment_id!r}: give each a distinct model_info.id"
                )
            ids[deployment.deployment_id] = position
        groups = {deployment.model_name for deployment in self.model_list}
        for field_name in ("fallbacks", "context_window_fallbacks"):
            given: dict[str, int] = {}
            for index, entry in enumerate(getattr(self, field_name)):
                for model, targets in entry.items():
                    if model in given:  # litellm's get_fallback_model_group stops at the first
                        raise ValueError(
                            f"{field_name}[{given[model]}] and {field_name}[{index}] both give the fallbacks "
                            f"of model group {shown(model)}: litellm uses the first only; list all of them "
                            "in one entry"
                        )
                    given[model] = index
                    unknown = [name for name in (model, *targets) if name not in groups]
                    if unknown:
                        raise ValueError(
                            f"{field_name} names unknown model groups {_names(unknown)}; known: "
                            f"{sorted(groups)}"
                        )
        unknown_defaults = [name for name in self.default_fallbacks if name not in groups]
        if unknown_defaults:
            raise ValueError(
                f"default_fallbacks names unknown model groups {_names(unknown_defaults)}; known: "
                f"{sorted(groups)}"
            )
        return self

    @property
    def model_names(self) -> frozenset[str]:
        return frozenset(deployment.model_name for deployment in self.model_list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        if not isinstance(data, Mapping):  # read from JSON or the environment, it can be anything
            raise ConfigurationError(f"router config must be a mapping, got {type(data).__name__}")
        try:
            return cls.model_validate(copy.deepcopy(dict(data)))
        except ValidationError as error:
            raise _config_error(error, data) from None

    @classmethod
    def from_yaml(cls, text: str) -> Self:
        try:
            data = safe_load(text) or {}
        except yaml.YAMLError as error:  # the line and the problem only (yaml_problem)
            raise ConfigurationError(f"router config is {yaml_problem(error)}") from None
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path) -> Self:
        return cls.from_yaml(Path(path).read_text(encoding="utf-8"))


def _config_error(error: ValidationError, data: Mapping[str, Any]) -> ConfigurationError:
    details = []
    items = error.errors(include_url=False)
    # pydantic checks min_length on the items that validated, so one invalid deployment also gets
    # "model_list: at least 1 item ..., not 0": not so, and reported already.
    item_failed = any(item["loc"][:1] == ("model_list",) and len(item["loc"]) > 1 for item in items)
    for item in items:
        location = item["loc"]
        if item_failed and location == ("model_list",) and item["type"] == "too_short":
            continue
        where = ".".join(str(part) for part in location)
        if location[:1] == ("model_list",) and len(location) > 1 and isinstance(location[1], int):
            entries = data.get("model_list") or []
            entry = entries[location[1]] if location[1] < len(entries) else {}
            name = entry.get("model_name") if isinstance(entry, Mapping) else None
            where = f"{where} (model {name!r})" if name else where
        names = [part for part in location if isinstance(part, str)]
        message = error_with_value(item, name=names[-1] if names else None)  # a deployment not shown
        details.append(f"{where}: {message}" if where else message)  # the config's own checks: no field
    return ConfigurationError("invalid router config: " + "; ".join(details))

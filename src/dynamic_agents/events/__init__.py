"""Wire models, stream names and codecs: what travels between interfaces and workers.

Nothing here imports a broker client, agno or litellm. The lifecycle events are loaded on first use:
a front end that only publishes requests and reads replies never builds their models.
"""

from typing import TYPE_CHECKING

from dynamic_agents._lazy import lazy_exports as _lazy_exports
from dynamic_agents.events._types import KNOWN_SOURCES, SCHEMA_VERSION
from dynamic_agents.events.codecs import (
    DEFAULT_MAX_CONTENT_LENGTH,
    DEFAULT_MAX_SIZE,
    DecodedMessage,
    EventCodec,
)
from dynamic_agents.events.envelope import Envelope, decode_envelope, encode_envelope
from dynamic_agents.events.models import (
    AgentRequestEvent,
    AgentResponseEvent,
    Attachment,
    ResponseStatus,
    WireModel,
)
from dynamic_agents.events.streams import DEFAULT_PREFIX, StreamNames
from dynamic_agents.events.targets import Target, TargetType

if TYPE_CHECKING:
    from dynamic_agents.events.lifecycle import (
        ContentDelta,
        LifecycleEvent,
        RequestAccepted,
        RunCompleted,
        RunFailed,
        RunStarted,
    )

_LAZY = dict.fromkeys(
    ("ContentDelta", "LifecycleEvent", "RequestAccepted", "RunCompleted", "RunFailed", "RunStarted"),
    "dynamic_agents.events.lifecycle",
)

__all__ = [
    "DEFAULT_MAX_CONTENT_LENGTH",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_PREFIX",
    "KNOWN_SOURCES",
    "SCHEMA_VERSION",
    "AgentRequestEvent",
    "AgentResponseEvent",
    "Attachment",
    "ContentDelta",
    "DecodedMessage",
    "Envelope",
    "EventCodec",
    "LifecycleEvent",
    "RequestAccepted",
    "ResponseStatus",
    "RunCompleted",
    "RunFailed",
    "RunStarted",
    "StreamNames",
    "Target",
    "TargetType",
    "WireModel",
    "decode_envelope",
    "encode_envelope",
]

__getattr__ = _lazy_exports(__name__, _LAZY, globals())

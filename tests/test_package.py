"""The package's face: exported names, laziness, version and the error tree."""

from __future__ import annotations

import ast
import copy
import importlib
import json
import pickle
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import FunctionType, ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import dynamic_agents
from dynamic_agents import exceptions

PUBLIC_PACKAGES = [
    "dynamic_agents",
    "dynamic_agents.events",
    "dynamic_agents.agents",
    "dynamic_agents.agents.stores",
    "dynamic_agents.api",
    "dynamic_agents.client",
    "dynamic_agents.exceptions",
    "dynamic_agents.llm",
    "dynamic_agents.observability",
    "dynamic_agents.routing",
    "dynamic_agents.secrets",
    "dynamic_agents.testing",
    "dynamic_agents.transports",
    "dynamic_agents.worker",
]


@pytest.mark.parametrize("name", PUBLIC_PACKAGES)
def test_all_lists_exactly_the_public_names(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__all__ == sorted(module.__all__, key=lambda n: (not n.isupper(), n))
    public = {
        attribute
        for attribute, value in vars(module).items()
        if not attribute.startswith("_")
        and not isinstance(value, ModuleType)
        and attribute not in {"annotations", "TYPE_CHECKING"}
        and (
            not isinstance(value, type | FunctionType)  # constants and type aliases
            or value.__module__.startswith("dynamic_agents")  # not something merely imported
        )
    }
    public |= set(getattr(module, "_LAZY", {}))
    if module is dynamic_agents:
        public.add("__version__")
    assert set(module.__all__) == public


@pytest.mark.parametrize("name", PUBLIC_PACKAGES)
def test_every_lazy_name_resolves(name: str) -> None:
    module = importlib.import_module(name)
    for attribute, source in getattr(module, "_LAZY", {}).items():
        assert getattr(module, attribute) is getattr(importlib.import_module(source), attribute)


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = dynamic_agents.Nope  # type: ignore[attr-defined]


def test_version_is_defined_once_and_matches_the_metadata() -> None:
    from importlib.metadata import version

    assert dynamic_agents.__version__ == version("dynamic-agents")
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject


def _pins(path: Path) -> dict[str, str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return {
        canonicalize_name(name): version
        for name, _, version in (line.partition("==") for line in lines if line and not line.startswith("#"))
    }


def test_the_declared_floors_are_the_versions_bash_ci_lowest_tests() -> None:
    """Each `>=` floor in pyproject.toml is the exact version `.ci/lowest` installs: the core and
    redis floors in the first constraints file, the other extras' in the second."""
    root = Path(__file__).parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    core = _pins(root / ".ci/lowest-constraints.txt")
    extras = _pins(root / ".ci/lowest-constraints-agents.txt")
    declared = [(req, core) for req in project["dependencies"] + project["optional-dependencies"]["redis"]]
    declared += [
        (req, extras)
        for extra in ("agents", "postgres", "api", "otel")
        for req in project["optional-dependencies"][extra]
    ]
    floors = {}
    for text, pins in declared:
        requirement = Requirement(text)
        for specifier in requirement.specifier:
            if specifier.operator == ">=":
                floors[requirement.name] = (specifier.version, pins.get(canonicalize_name(requirement.name)))
    assert len(floors) == 15  # every dependency but the dynamic-agents[agents] of the api extra
    assert {name: floor for name, (floor, _) in floors.items()} == {
        name: pinned for name, (_, pinned) in floors.items()
    }


@pytest.mark.parametrize(
    "module",
    ["dynamic_agents", "dynamic_agents.events", "dynamic_agents.transports", "dynamic_agents.observability"],
)
def test_light_imports_load_neither_litellm_nor_agno(module: str) -> None:
    code = (
        f"import json, sys; import {module}; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'litellm', 'agno', 'redis', 'faststream', 'fastapi', 'opentelemetry'})))"
    )
    loaded = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))
    assert loaded == []


def test_the_events_package_builds_the_lifecycle_models_on_first_use() -> None:
    """A front end that only publishes requests and reads replies never pays for them."""
    code = (
        "import sys; import dynamic_agents.events as events; "
        "print('dynamic_agents.events.lifecycle' in sys.modules); events.RunStarted; "
        "print('dynamic_agents.events.lifecycle' in sys.modules)"
    )
    assert subprocess.check_output([sys.executable, "-c", code], text=True).split() == ["False", "True"]


def test_every_error_subclasses_the_base_and_a_builtin() -> None:
    for name in exceptions.__all__:
        error = getattr(exceptions, name)
        if not (isinstance(error, type) and issubclass(error, BaseException)):
            continue
        assert issubclass(error, exceptions.DynamicAgentsError)
        is_category = error in {
            exceptions.ApiError,  # any HTTP status the REST API answers
            exceptions.DynamicAgentsError,
            exceptions.SecretsError,
            exceptions.IdentityError,
            exceptions.LLMError,
            exceptions.SpecError,
        }
        if not is_category:
            builtin_bases = [b for b in error.__mro__ if b.__module__ == "builtins"]
            assert set(builtin_bases) - {Exception, BaseException, object}, name
        assert not issubclass(error, KeyError), name
        assert error.__name__ in (exceptions.__doc__ or ""), f"{name} is not in the documented tree"


def test_missing_dependency_error_gives_the_install_line() -> None:
    error = exceptions.MissingDependencyError("RedisStreamsTransport", "redis")
    assert isinstance(error, ImportError)
    assert "pip install 'dynamic-agents[redis]'" in str(error)
    binary = exceptions.MissingDependencyError("redis-server", install="apt-get install redis-server")
    assert str(binary) == "redis-server is not available: apt-get install redis-server"


def test_the_redis_transport_without_hiredis_names_the_extra_to_install() -> None:
    code = (
        "import sys; sys.modules['hiredis'] = None\n"  # as if it were not installed
        "from dynamic_agents.exceptions import MissingDependencyError\n"
        "try:\n"
        "    from dynamic_agents.transports import RedisStreamsTransport\n"
        "except MissingDependencyError as error:\n"
        "    print(error)\n"
    )
    printed = subprocess.check_output([sys.executable, "-c", code], text=True)
    assert printed.strip() == "RedisStreamsTransport is not available: pip install 'dynamic-agents[redis]'"


@pytest.mark.parametrize(
    ("hidden", "statement", "extra"),
    [
        ("agno", "from dynamic_agents.agents import AgentRuntime", "agents"),
        ("agno", "from dynamic_agents.agents import AgnoExecutor", "agents"),
        ("agno", "from dynamic_agents.testing import ScriptedModels", "agents"),
        ("sqlalchemy", "from dynamic_agents.agents import session_db", "agents"),
        (
            "psycopg",
            "from dynamic_agents.agents import session_db; session_db('postgresql://u@127.0.0.1/db')",
            "postgres",
        ),
        ("agno", "from dynamic_agents.api import create_api_router", "agents"),
        ("fastapi", "from dynamic_agents.api import create_api_router", "api"),
        (
            "redis",
            "import asyncio\n"
            "from dynamic_agents.llm import RouterConfig, build_router\n"
            "from dynamic_agents.secrets import SecretsManager, StaticSource\n"
            "config = RouterConfig.from_dict({'model_list': [{'model_name': 'm', 'litellm_params': "
            "{'model': 'openai/m', 'api_key': 'literal-key-value'}}], 'redis_url': 'redis://127.0.0.1:1/0'})\n"
            "asyncio.run(build_router(config, SecretsManager(StaticSource({}))))",
            "redis",
        ),
    ],
    ids=lambda value: value.split("\n")[-1][:60] if isinstance(value, str) else value,
)
def test_a_feature_without_its_extra_names_the_extra_to_install(
    hidden: str, statement: str, extra: str
) -> None:
    """Not a raw ImportError from deep inside: which extra to install."""
    code = (
        "import sys\n"
        "class Hide:\n"  # as if the package were not installed
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] == {hidden!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from dynamic_agents.exceptions import MissingDependencyError\n"
        "try:\n"
        + "".join(f"    {line}\n" for line in statement.split("\n"))
        + "except MissingDependencyError as error:\n"
        "    print(error)\n"
    )
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert printed.stdout.strip().endswith(f"pip install 'dynamic-agents[{extra}]'"), printed.stderr[-2000:]


def test_the_http_client_needs_only_the_core_install() -> None:
    code = (
        "import json, sys; from dynamic_agents.api import AgentsHTTPClient; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'agno', 'litellm', 'fastapi', 'starlette', 'sqlalchemy', 'redis'})))"
    )
    assert json.loads(subprocess.check_output([sys.executable, "-c", code], text=True)) == []


@pytest.mark.parametrize(
    "error",
    [
        exceptions.RoutingConfigError("bad pattern", source="routing.yaml", line=3, path="rules[0]"),
        exceptions.MissingDependencyError("RedisStreamsTransport", "redis"),
        exceptions.EventValidationError(
            "AgentRequestEvent", (exceptions.FieldError("source", "required", "None"),)
        ),
        exceptions.UnsupportedSchemaVersionError("2.0", 1),
        exceptions.EventTooLargeError("content", 300, 200),
        exceptions.LeaseLostError("s1"),
        exceptions.RunLostError("r1", "s1"),
        exceptions.RequeueError("1-0", "dead", "it has no original fields to put back"),
        exceptions.ApiError(404, {"detail": "no agent 'x'"}),
        exceptions.LLMRateLimitError("slow down", status=429, model="gpt"),
        exceptions.SpecValidationError("no such tool", spec="agent 'a'", path="tools[0]"),
        exceptions.SpecConflictError("stale", current=3),
        exceptions.IdentityNotFoundError("GET /secrets/x: 404", status=404),
    ],
    ids=lambda error: type(error).__name__,
)
def test_errors_survive_pickling_and_copying(error: exceptions.DynamicAgentsError) -> None:
    """Errors cross process boundaries (a process pool, multiprocessing) and get copied: they come
    back as the same error, not a garbled message or a TypeError from their ``__init__``."""
    for again in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
        assert type(again) is type(error)
        assert (str(again), again.args) == (str(error), error.args)
        assert vars(again) == vars(error)


SRC = Path(dynamic_agents.__file__).parent


def _package_of(module: str) -> str:
    """``dynamic_agents.events`` for ``dynamic_agents.events.codecs``; a top-level module is its own."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_package_imports_another_packages_private_names() -> None:
    """A name with a leading underscore is its package's own: another package that needs it gets
    it from a shared home (an internal module's public name), not by reaching in."""
    reached_in = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC.parent).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("dynamic_agents."):
                continue
            source = node.module or ""
            if _package_of(source) == _package_of(module):
                continue
            private = [name for alias in node.names if _is_private(name := alias.name)]
            reached_in += [f"{module}: from {source} import {name}" for name in private]
    assert reached_in == []


def test_the_testing_docstrings_promise_only_what_redis_server_does() -> None:
    """The package docstring said RedisServer could "flush", which no method does."""
    from dynamic_agents import testing
    from dynamic_agents.testing import RedisServer, redis_server

    bullet = (testing.__doc__ or "").split("* ``RedisServer``")[1].split("\n* ")[0]
    title = (redis_server.__doc__ or "").splitlines()[0]
    for text in (bullet, title):
        verbs = re.findall(r"\b(kill|restart|pause|resume|flush|start|stop)\b", text)
        assert verbs, text
        assert [verb for verb in verbs if not callable(getattr(RedisServer, verb, None))] == [], text

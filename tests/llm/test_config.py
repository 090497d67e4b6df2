from __future__ import annotations

import copy
import typing
import uuid
from typing import Any

import pytest

from dynamic_agents.exceptions import ConfigurationError
from dynamic_agents.llm import ROUTING_STRATEGIES, RouterConfig
from tests.support.yaml_documents import FORBIDDEN_CHARACTERS, UNREADABLE_SCALARS, alias_bomb


def deployment(name: str = "gpt", **params: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": "openai/gpt-4o-mini", **params}}


def test_routing_strategies_match_litellm() -> None:
    from litellm.types.litellm_params import RoutingStrategyName

    assert set(typing.get_args(RoutingStrategyName)) == ROUTING_STRATEGIES


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="routing_strategy 'fastest' is not one of"):
        RouterConfig.from_dict({"model_list": [deployment()], "routing_strategy": "fastest"})


def test_both_fallback_forms_are_accepted() -> None:
    models = [deployment("a"), deployment("b"), deployment("c")]
    seed_form = RouterConfig.from_dict({"model_list": models, "fallbacks": {"a": ["b", "c"]}})
    litellm_form = RouterConfig.from_dict({"model_list": models, "fallbacks": [{"a": ["b", "c"]}]})
    assert seed_form.fallbacks == litellm_form.fallbacks == [{"a": ["b", "c"]}]
    windows = RouterConfig.from_dict({"model_list": models, "context_window_fallbacks": {"a": ["c"]}})
    assert windows.context_window_fallbacks == [{"a": ["c"]}]


def test_fallbacks_must_name_known_groups() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown model groups \['ghost'\]"):
        RouterConfig.from_dict({"model_list": [deployment("a")], "fallbacks": {"a": ["ghost"]}})
    with pytest.raises(ConfigurationError, match="default_fallbacks"):
        RouterConfig.from_dict({"model_list": [deployment("a")], "default_fallbacks": ["ghost"]})


@pytest.mark.parametrize("targets", ["b", 5, None, {"b": 1}])
@pytest.mark.parametrize("form", ["mapping", "list"])
def test_fallback_targets_that_are_not_a_list_are_a_configuration_error(targets: Any, form: str) -> None:
    """Not a TypeError from deep inside, nor a string read as a list of one-letter groups."""
    fallbacks: Any = {"a": targets} if form == "mapping" else [{"a": targets}]
    with pytest.raises(ConfigurationError, match=r"fallbacks\.0\.a: Input should be a valid list"):
        RouterConfig.from_dict({"model_list": [deployment("a"), deployment("b")], "fallbacks": fallbacks})


@pytest.mark.parametrize("name", ["num_retries", "timeout", "fallbacks", "model_list", "redis_url"])
def test_router_settings_may_not_hold_a_field_of_the_config(name: str) -> None:
    """build_router sets these from the config's own fields: one in router_settings was dropped."""
    with pytest.raises(
        ConfigurationError,
        match=rf"router_settings: '{name}' is a field of the router config: set it at the top level",
    ):
        RouterConfig.from_dict({"model_list": [deployment()], "router_settings": {name: 7}})


def test_errors_name_the_deployment_and_field() -> None:
    models = [
        deployment("fine"),
        {"model_name": "broken", "litellm_params": {"api_key": "secret:openai:api_key"}},
    ]
    with pytest.raises(ConfigurationError) as caught:
        RouterConfig.from_dict({"model_list": models})
    assert "model_list.1.litellm_params (model 'broken')" in str(caught.value)
    assert "litellm_params.model is required" in str(caught.value)
    with pytest.raises(ConfigurationError, match=r"rpm must be a positive integer"):
        RouterConfig.from_dict({"model_list": [deployment(rpm=0)]})


def test_derived_ids_ignore_keys_and_list_position() -> None:
    a = deployment("gpt", api_key="secret:openai:api_key", api_base="https://a.example/v1")
    b = deployment("gpt", api_key="secret:openai:api_key", api_base="https://b.example/v1")
    first = RouterConfig.from_dict({"model_list": [a, b]})
    reordered = RouterConfig.from_dict({"model_list": [b, a]})
    assert {d.deployment_id for d in first.model_list} == {d.deployment_id for d in reordered.model_list}
    rotated = copy.deepcopy(a)
    rotated["litellm_params"]["api_key"] = "sk-a-literal-key-instead"
    assert (
        RouterConfig.from_dict({"model_list": [rotated]}).model_list[0].deployment_id
        == first.model_list[0].deployment_id
    )
    given = deployment("gpt")
    given["model_info"] = {"id": "my-id"}
    assert RouterConfig.from_dict({"model_list": [given]}).model_list[0].deployment_id == "my-id"


@pytest.mark.parametrize(
    ("given", "shown"),
    [("", "''"), ("   ", "'   '"), (True, "True"), (1.5, "1.5"), (["gpt-main"], "a list"), ({}, "a dict")],
)
def test_a_model_info_id_that_is_no_id_is_refused_naming_the_deployment(given: Any, shown: str) -> None:
    """It fell back to a derived id when empty (a rotation or cooldown then keyed on an id the
    config never gave), or became its ``str()`` (``'True'``, ``"['gpt-main']"``)."""
    backup = deployment("backup")
    backup["model_info"] = {"id": given}
    with pytest.raises(ConfigurationError) as caught:
        RouterConfig.from_dict({"model_list": [deployment(), backup]})
    message = str(caught.value)
    assert message.startswith("invalid router config: model_list.1.model_info (model 'backup'): ")
    assert f"model_info.id must be a non-empty string, such as 'backup-main', got {shown} " in message


@pytest.mark.parametrize(("given", "expected"), [("gpt-main", "gpt-main"), (7, "7"), (0, "0")])
def test_a_model_info_id_is_a_string_or_an_integer_taken_as_its_text(given: Any, expected: str) -> None:
    """litellm's ``ModelInfo`` takes an integer id as its text (an id written unquoted in YAML):
    ``0`` too, like ``1`` beside it, where it fell back to a derived id."""
    first = deployment()
    first["model_info"] = {"id": given}
    second = deployment("backup")
    second["model_info"] = {"id": 1}
    config = RouterConfig.from_dict({"model_list": [first, second]})
    assert [d.deployment_id for d in config.model_list] == [expected, "1"]


def test_a_model_info_id_of_none_is_derived() -> None:
    """As litellm's ``ModelInfo(id=None)`` makes one (``id:`` left empty in YAML)."""
    given = deployment()
    given["model_info"] = {"id": None}
    assert RouterConfig.from_dict({"model_list": [given]}).model_list[0].deployment_id.startswith("gpt-")


def test_identical_deployments_need_explicit_ids() -> None:
    with pytest.raises(ConfigurationError, match="same deployment id"):
        RouterConfig.from_dict({"model_list": [deployment(), deployment()]})


def test_inputs_are_copied() -> None:
    data = {"model_list": [deployment(tags=["paid"])], "fallbacks": []}
    config = RouterConfig.from_dict(data)
    data["model_list"][0]["litellm_params"]["tags"].append("mutated")  # type: ignore[index]
    assert config.model_list[0].litellm_params["tags"] == ["paid"]


@pytest.mark.usefixtures("yaml_loader")
def test_yaml() -> None:
    config = RouterConfig.from_yaml(
        """
model_list:
  - model_name: gpt-4o
    litellm_params: {model: openai/gpt-4o, api_key: "os.environ/OPENAI_API_KEY"}
  - model_name: claude
    litellm_params: {model: anthropic/claude-3-5-sonnet-latest, api_key: "secret:anthropic:api_key"}
fallbacks: {gpt-4o: [claude]}
routing_strategy: usage-based-routing-v2
"""
    )
    assert config.model_names == {"gpt-4o", "claude"}
    with pytest.raises(ConfigurationError, match="must be a mapping"):
        RouterConfig.from_yaml("- a\n- b\n")


def test_a_key_given_twice_is_refused_not_overwritten() -> None:
    # the second api_key won without a word: the deployment billed another account's key
    text = (
        "model_list:\n"
        "  - model_name: gpt\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o\n"
        '      api_key: "secret:openai:api_key"\n'
        '      api_key: "os.environ/OTHER_TEAMS_KEY"\n'
    )
    with pytest.raises(
        ConfigurationError, match=r"^router config is not valid YAML at line 6: key 'api_key' is given twice"
    ):
        RouterConfig.from_yaml(text)


@pytest.mark.usefixtures("yaml_loader")
def test_malformed_yaml_is_a_configuration_error_naming_the_line_not_the_key() -> None:
    text = (
        "model_list:\n"
        "  - model_name: gpt\n"
        '    litellm_params: {model: openai/x, api_key: "sk-yaml-CANARY-1234\n'
    )
    with pytest.raises(ConfigurationError, match="not valid YAML at line 4") as caught:
        RouterConfig.from_yaml(text)
    assert "sk-yaml-CANARY-1234" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_repr_masks_literal_credentials_but_shows_references() -> None:
    key, nested, password = "sk-CANARY-literal-0001", "AKIA-CANARY-nested-01", "CANARY-redis-pw-01"
    params = {"api_key": key, "api_base": "secret:azure:endpoint", "extra": {"aws_secret_access_key": nested}}
    config = RouterConfig.from_dict(
        {"model_list": [deployment(**params)], "redis_url": f"redis://user:{password}@127.0.0.1:6379/0"}
    )
    for text in (repr(config), str(config), repr(config.model_list[0]), str(config.model_list[0])):
        assert key not in text
        assert nested not in text
        assert password not in text
        assert "secret:azure:endpoint" in text
    assert config.model_list[0].litellm_params["api_key"] == key  # the data itself is untouched


def test_an_invalid_deployment_is_reported_once_and_model_level_errors_have_no_empty_location() -> None:
    with pytest.raises(ConfigurationError) as caught:
        RouterConfig.from_dict({"model_list": [{"model_name": "gpt", "litellm_params": {}}]})
    assert "at least 1 item" not in str(caught.value)  # the list has one item: it is invalid
    assert str(caught.value).startswith("invalid router config: model_list.0.litellm_params (model 'gpt')")
    with pytest.raises(ConfigurationError) as caught:
        RouterConfig.from_dict({"model_list": [deployment("a")], "fallbacks": {"a": ["ghost"]}})
    assert str(caught.value).startswith("invalid router config: fallbacks names unknown model groups")
    with pytest.raises(ConfigurationError, match=r"model_list: Tuple should have at least 1 item"):
        RouterConfig.from_dict({"model_list": []})


async def test_a_secret_value_in_the_config_is_accepted_and_used() -> None:
    """A key the host fetched itself may be given as a SecretValue: the config copies its input,
    and copying one must not go through pickling (which it refuses)."""
    from dynamic_agents.llm import build_router
    from dynamic_agents.secrets import SecretsManager, SecretValue, StaticSource

    key = SecretValue("sk-CANARY-secret-value-01")
    config = RouterConfig.from_dict({"model_list": [deployment(api_key=key, mock_response="ok")]})
    assert config.model_list[0].litellm_params["api_key"] == key
    async with await build_router(config, SecretsManager(StaticSource({}))) as router:
        (params,) = [d["litellm_params"] for d in router.router.model_list]
        assert params["api_key"] == key.reveal()


def test_repr_masks_a_key_pasted_in_place_of_a_references_name() -> None:
    pasted, malformed = f"gsk_{uuid.uuid4().hex}{uuid.uuid4().hex}", f"sk-{uuid.uuid4().hex}"
    params = {
        "api_key": f"os.environ/{pasted}",
        "api_base": f"secret:openai:{malformed}=oops",  # malformed: what follows may be a key
        "organization": "secret:openai:org_id",
    }
    config = RouterConfig.from_dict({"model_list": [deployment(**params)]})
    for text in (repr(config), str(config), repr(config.model_list[0])):
        assert pasted not in text
        assert malformed not in text
        assert "os.environ/**********" in text
        assert "secret:**********" in text
        assert "secret:openai:org_id" in text  # an ordinary reference is shown as written


def test_repr_masks_literal_credential_headers_and_url_passwords() -> None:
    bearer, header, password = "sk-CANARY-bearer-0003", "CANARY-api-key-hdr-04", "CANARY-proxy-pw-05"
    headers = {
        "Authorization": f"Bearer {bearer}",
        "api-key": header,
        "X-Api-Key": "secret:gateway:key",
        "anthropic-version": "2023-06-01",
    }
    params = {"extra_headers": headers, "api_base": f"https://proxy:{password}@llm-proxy.test/v1"}
    config = RouterConfig.from_dict({"model_list": [deployment(**params)]})
    for text in (repr(config), str(config), repr(config.model_list[0]), str(config.model_list[0])):
        assert bearer not in text
        assert header not in text
        assert password not in text
        assert "secret:gateway:key" in text  # a reference: where the value comes from, no value
        assert "2023-06-01" in text  # not a credential
        assert "https://proxy:**********@llm-proxy.test/v1" in text
    assert config.model_list[0].litellm_params["extra_headers"] == headers  # the data itself is untouched


def test_a_derived_deployment_id_does_not_depend_on_a_literal_credential_header() -> None:
    ids = {
        RouterConfig.from_dict(
            {"model_list": [deployment(extra_headers={"Authorization": f"Bearer {key}", "X-Team": "blue"})]}
        )
        .model_list[0]
        .deployment_id
        for key in ("sk-one-literal-key-01", "sk-two-literal-key-02")
    }
    assert len(ids) == 1


def test_repr_masks_credentials_in_an_api_base_query_string() -> None:
    """Google's ``?key=``, an Azure SAS ``sig``, ``api_key``/``access_token``/``token``/``password``/
    ``secret`` in ``api_base``'s query: masked in any case of the name; ``api-version`` and
    ``timeout`` stay readable."""
    canaries = {name: f"CANARY-query-{name}-{uuid.uuid4().hex}" for name in QUERY_CREDENTIALS}
    query = "&".join(f"{name}={value}" for name, value in canaries.items())
    api_base = f"https://generativelanguage.googleapis.com/v1?{query}&api-version=2024-06-01&timeout=5"
    config = RouterConfig.from_dict({"model_list": [deployment(api_base=api_base)]})
    for text in (repr(config), str(config), repr(config.model_list[0]), str(config.model_list[0])):
        for value in canaries.values():
            assert value not in text
        assert "api-version=2024-06-01&timeout=5" in text
        assert "key=**********" in text
        assert "SIG=**********" in text
    assert config.model_list[0].litellm_params["api_base"] == api_base  # the data itself is untouched


QUERY_CREDENTIALS = ("key", "SIG", "api_key", "Access_Token", "token", "password", "secret")


@pytest.mark.parametrize(
    ("setting", "value", "shown"),
    [
        ("num_retries", "two", "num_retries: Input should be a valid integer (got 'two')"),
        ("timeout", -1, "timeout: Input should be greater than 0 (got -1)"),
        ("cooldown_time", "soon", "(got 'soon')"),
        ("enable_tag_filtering", "maybe", "enable_tag_filtering: Input should be a valid boolean"),
    ],
)
def test_a_bad_setting_is_refused_naming_its_value(setting: str, value: object, shown: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RouterConfig.from_dict({"model_list": [deployment()], setting: value})
    assert shown in str(caught.value)
    assert f"(got {value!r})" in str(caught.value)


def test_a_bad_value_under_a_credential_name_or_shaped_like_a_key_is_masked() -> None:
    key = "sk-proj-" + "a1B2c3D4" * 5
    with pytest.raises(ConfigurationError) as caught:
        RouterConfig.from_dict({"model_list": [deployment()], "num_retries": key})
    assert key not in str(caught.value)
    assert "num_retries: Input should be a valid integer" in str(caught.value)
    assert "(got **********)" in str(caught.value)
    password = "redis-pass-0123"
    with pytest.raises(ConfigurationError) as caught:
        RouterConfig.from_dict({"model_list": [deployment()], "timeout": f"redis://:{password}@cache:6379"})
    assert password not in str(caught.value)


def test_unknown_default_fallbacks_name_the_known_groups() -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"default_fallbacks names unknown model groups \['ghost'\]; known: \['gpt'\]",
    ):
        RouterConfig.from_dict({"model_list": [deployment()], "default_fallbacks": ["ghost"]})


@pytest.mark.parametrize("name", ["rpm", "tpm"])
def test_a_boolean_rate_limit_is_refused(name: str) -> None:
    # YAML reads `rpm: yes` as True, which is an int in Python: litellm would allow one a minute.
    with pytest.raises(ConfigurationError, match=rf"{name} must be a positive integer, got True"):
        RouterConfig.from_dict({"model_list": [deployment(**{name: True})]})


@pytest.mark.parametrize("data", [None, [{"model_list": []}], "model_list: []", 7])
def test_a_config_that_is_no_mapping_is_a_configuration_error(data: Any) -> None:
    # from_yaml said so; from_dict let a bare TypeError out ("'NoneType' object is not iterable")
    kind = type(data).__name__
    with pytest.raises(ConfigurationError, match=rf"^router config must be a mapping, got {kind}$"):
        RouterConfig.from_dict(data)


CANARY = "sk-CANARY123456789abcdef"


@pytest.mark.parametrize(
    "data",
    [
        {"model_list": [deployment()], "routing_strategy": CANARY},
        {"model_list": [deployment(rpm=CANARY)]},
        {"model_list": [deployment(tpm=CANARY)]},
        {"model_list": [deployment()], "fallbacks": {"gpt": [CANARY]}},
        {"model_list": [deployment()], "context_window_fallbacks": {CANARY: ["gpt"]}},
        {"model_list": [deployment()], "default_fallbacks": [CANARY]},
    ],
    ids=["strategy", "rpm", "tpm", "fallbacks", "context_window_fallbacks", "default_fallbacks"],
)
def test_the_config_s_own_checks_mask_a_key_given_in_the_wrong_place(data: dict[str, Any]) -> None:
    # pydantic's errors had their value masked; the config's own checks quoted it whole
    with pytest.raises(ConfigurationError) as caught:
        RouterConfig.from_dict(data)
    assert "CANARY" not in str(caught.value)
    assert "**********" in str(caught.value)


def test_an_unknown_strategy_suggests_the_close_one_and_quotes_it_once() -> None:
    with pytest.raises(ConfigurationError) as caught:
        RouterConfig.from_dict({"model_list": [deployment()], "routing_strategy": "least_busy"})
    assert str(caught.value).count("'least_busy'") == 1
    assert "did you mean 'least-busy'?" in str(caught.value)


@pytest.mark.parametrize("setting", ["num_retries", "timeout", "cooldown_time", "allowed_fails"])
def test_a_boolean_for_a_numeric_setting_is_refused(setting: str) -> None:
    # YAML reads `timeout: yes` as True: it was taken as 1 (a one-second timeout, one retry)
    with pytest.raises(ConfigurationError, match=rf"{setting}: .*boolean.* \(got True\)"):
        RouterConfig.from_dict({"model_list": [deployment()], setting: True})


@pytest.mark.parametrize("setting", ["timeout", "cooldown_time"])
def test_an_infinite_timeout_or_cooldown_is_refused(setting: str) -> None:
    # `.inf` in YAML: a cooldown that never ends takes a deployment out for good after one failure
    with pytest.raises(ConfigurationError, match=rf"{setting}: Input should be a finite number"):
        RouterConfig.from_dict({"model_list": [deployment()], setting: float("inf")})


@pytest.mark.parametrize(
    ("setting", "value", "kind"),
    [
        ("num_retries", "3", "integer"),
        ("timeout", "30", "number"),
        ("timeout", "1e3", "number"),
        ("cooldown_time", "60", "number"),
        ("allowed_fails", "1", "integer"),
    ],
)
def test_a_number_written_as_text_is_refused_naming_the_setting(setting: str, value: str, kind: str) -> None:
    # as WorkerSettings refuses them: "30" was read as 30 (quoted in YAML, "30s" would not be)
    with pytest.raises(
        ConfigurationError, match=rf"{setting}: Input should be a valid {kind} \(got '{value}'\)"
    ):
        RouterConfig.from_dict({"model_list": [deployment()], setting: value})


@pytest.mark.parametrize("setting", ["enable_tag_filtering", "enable_pre_call_checks"])
@pytest.mark.parametrize("value", ["yes", "true", 1, 0])
def test_a_switch_given_as_text_or_a_number_is_refused_naming_it(setting: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=rf"{setting}: Input should be a valid boolean"):
        RouterConfig.from_dict({"model_list": [deployment()], setting: value})


def test_yaml_booleans_are_taken_for_a_switch() -> None:
    config = RouterConfig.from_yaml(
        "model_list: [{model_name: gpt, litellm_params: {model: openai/gpt-4o-mini}}]\n"
        "enable_tag_filtering: yes\nenable_pre_call_checks: false\n"
    )
    assert (config.enable_tag_filtering, config.enable_pre_call_checks) == (True, False)


def test_numeric_settings_take_numbers_an_int_for_seconds_too() -> None:
    config = RouterConfig.from_dict(
        {
            "model_list": [deployment()],
            "num_retries": 3,
            "timeout": 30,
            "cooldown_time": 0.5,
            "allowed_fails": 0,
        }
    )
    assert (config.num_retries, config.timeout, config.cooldown_time, config.allowed_fails) == (
        3,
        30.0,
        0.5,
        0,
    )


async def test_a_redis_password_in_router_settings_is_masked_and_registered() -> None:
    """litellm's Router takes ``redis_host`` / ``redis_port`` / ``redis_password`` (its documented
    alternative to a ``redis_url``), passed through ``router_settings``: the password is a literal
    credential like a deployment's key, masked in the config's ``repr`` and in errors and logs."""
    from dynamic_agents._redaction import REDACTOR
    from dynamic_agents.llm import build_router
    from dynamic_agents.secrets import SecretsManager, StaticSource

    password = f"canary-redis-password-{uuid.uuid4().hex[:8]}"
    config = RouterConfig.from_dict(
        {"model_list": [deployment()], "router_settings": {"redis_password": password}}
    )
    assert password not in repr(config)
    assert "'redis_password': '**********'" in repr(config)
    router = await build_router(config, SecretsManager(StaticSource({})))
    try:
        assert password not in REDACTOR.redact(f"redis refused the password {password}")
    finally:
        await router.aclose()


@pytest.mark.usefixtures("yaml_loader")
@pytest.mark.parametrize("text", [alias_bomb("router_settings"), *UNREADABLE_SCALARS])
def test_yaml_the_reader_lets_through_is_refused_as_yaml(text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^router config is not valid YAML at line \d+: "):
        RouterConfig.from_yaml(text)


@pytest.mark.usefixtures("yaml_loader")
@pytest.mark.parametrize(("text", "problem"), [(text, problem) for text, problem, _ in FORBIDDEN_CHARACTERS])
def test_a_character_yaml_does_not_allow_is_named_with_its_line_and_column(text: str, problem: str) -> None:
    """It said only "router config is not valid YAML: ReaderError"."""
    with pytest.raises(ConfigurationError) as caught:
        RouterConfig.from_yaml(text)
    assert str(caught.value) == f"router config is not valid YAML {problem}"


@pytest.mark.parametrize("field", ["fallbacks", "context_window_fallbacks"])
def test_a_group_given_fallbacks_twice_is_refused(field: str) -> None:
    """litellm takes a group's fallbacks from its first entry (``get_fallback_model_group``): a
    second entry for the group was accepted and never used, ``c`` never tried."""
    models = [deployment("a"), deployment("b"), deployment("c")]
    with pytest.raises(ConfigurationError) as caught:
        RouterConfig.from_dict({"model_list": models, field: [{"a": ["b"]}, {"b": ["c"]}, {"a": ["c"]}]})
    assert str(caught.value) == (
        f"invalid router config: {field}[0] and {field}[2] both give the fallbacks of model group "
        "'a': litellm uses the first only; list all of them in one entry"
    )
    RouterConfig.from_dict({"model_list": models, field: [{"a": ["b", "c"]}, {"b": ["c"]}]})


def test_a_group_given_fallbacks_twice_is_shown_masked() -> None:
    pasted = f"sk-{uuid.uuid4().hex}"
    models = [deployment(pasted), deployment("b")]
    with pytest.raises(ConfigurationError) as caught:
        RouterConfig.from_dict({"model_list": models, "fallbacks": [{pasted: ["b"]}, {pasted: ["b"]}]})
    assert pasted not in str(caught.value)
    assert "fallbacks of model group **********" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("max_parallel_requests", 0, "a positive integer"),
        ("max_parallel_requests", -1, "a positive integer"),
        ("max_parallel_requests", "4", "a positive integer"),
        ("max_parallel_requests", True, "a positive integer"),
        ("weight", "heavy", "a number, 0 or more"),
        ("weight", -1, "a number, 0 or more"),
        ("weight", float("nan"), "a number, 0 or more"),
        ("weight", True, "a number, 0 or more"),
        ("order", "first", "an integer"),
        ("order", 1.5, "an integer"),
        ("order", True, "an integer"),
        ("weight", CANARY, "a number, 0 or more"),
    ],
)
def test_bad_routing_params_are_refused_naming_the_field_and_the_value(
    name: str, value: Any, expected: str
) -> None:
    """Accepted, they broke the group at its calls: a weight that is no number failed every call
    as unavailable (litellm's ``TypeError``), a ``max_parallel_requests`` of 0 or less took its
    deployment out of every call without a word, an order that is no integer failed litellm's
    ``min`` over the group's orders."""
    with pytest.raises(ConfigurationError) as caught:
        RouterConfig.from_dict({"model_list": [deployment(**{name: value})]})
    text = str(caught.value)
    assert f"litellm_params.{name} must be {expected}, got " in text
    assert "CANARY" not in text


def test_good_routing_params_are_accepted() -> None:
    config = RouterConfig.from_dict(
        {
            "model_list": [
                deployment(weight=0, order=1, max_parallel_requests=4),
                deployment(weight=2.5, order=2),
            ]
        }
    )
    assert [d.litellm_params.get("weight") for d in config.model_list] == [0, 2.5]

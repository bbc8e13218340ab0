"""config/camera.yaml is complete and valid against config/camera.schema.yaml."""
from __future__ import annotations

import copy

import jsonschema
import pytest
import yaml

from drivers.camera.capture import EXCEPTION_IGNORES
from drivers.camera.quality import DEFAULT_THRESHOLDS
from drivers.camera.scene import SceneParams

from .conftest import CONFIG_DIR


@pytest.fixture(scope="module")
def schema() -> dict:
    return yaml.safe_load((CONFIG_DIR / "camera.schema.yaml").read_text())


def _resolve(schema: dict, node: dict) -> dict:
    ref = node.get("$ref")
    if ref:
        target = schema
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _walk(schema: dict, node: dict, path: str = ""):
    node = _resolve(schema, node)
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _walk(schema, child, f"{path}.{key}" if path else key)


def test_schema_is_valid_draft_2020_12(schema):
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_defaults_validate(schema, defaults):
    jsonschema.Draft202012Validator(schema).validate(defaults)


def test_every_object_is_closed_and_every_key_has_a_default(schema, defaults):
    for path, node in _walk(schema, schema):
        if node.get("type") == "object":
            assert node.get("additionalProperties") is False, path
        value = defaults
        for part in filter(None, path.split(".")):
            assert isinstance(value, dict) and part in value, f"camera.yaml lacks {path}"
            value = value[part]
        if "default" in node:
            assert value == node["default"], path
        if path and "properties" not in node:
            assert node.get("description") or path.count(".") >= 2, f"{path} has no description"


def test_typos_are_rejected(schema, defaults):
    validator = jsonschema.Draft202012Validator(schema)
    for mutate in (lambda c: c["source"].update(fsp=30), lambda c: c["quality"].update(roll={"max": 5}),
                   lambda c: c["source"].update(kind="webcam"), lambda c: c["capture"].update(consecutive_frames=0),
                   lambda c: c["quality"]["roll_deg"].update(mx=5)):
        config = copy.deepcopy(defaults)
        mutate(config)
        assert list(validator.iter_errors(config)), config


def test_code_defaults_match_the_file(defaults):
    assert defaults["quality"] == DEFAULT_THRESHOLDS
    assert tuple(defaults["capture"]["exception_ignores"]) == EXCEPTION_IGNORES
    assert SceneParams(**defaults["source"]["scene"]) == SceneParams()

"""The published OCSF schema, for tests: does an emitted event validate against its class?

The schemas are not written here. ``ocsf-json-schema`` (a dev dependency, MIT)
ships the OCSF project's own schema exports (``schema.ocsf.io/<version>/export/
schema``, Apache-2.0) and turns a class of an export into a Draft 2020-12
JSON Schema, with the objects it references embedded and the profiles an
event declares applied; ``jsonschema`` validates against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib.resources import files
from typing import Any

import jsonschema
from ocsf_json_schema import OcsfJsonSchemaEmbedded, load_ocsf_schema_json

from qustody.audit.ocsf import CLASSES, OCSF_VERSION


@cache
def published_schema() -> dict[str, Any]:
    """The OCSF project's schema export for :data:`OCSF_VERSION`, read as JSON (never pickle)."""
    path = files("ocsf_json_schema") / "ocsf" / f"{OCSF_VERSION}.json"
    export: dict[str, Any] = load_ocsf_schema_json(str(path))
    assert export["version"] == OCSF_VERSION
    return export


@cache
def _validator(class_uid: int, profiles: tuple[str, ...]) -> jsonschema.Draft202012Validator:
    schemas = OcsfJsonSchemaEmbedded(published_schema())
    schema = schemas.get_class_schema(schemas.lookup_class_name_from_uid(class_uid), list(profiles))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def assert_valid(event: Mapping[str, Any]) -> None:
    """``event`` validates against its class, with the profiles it declares."""
    profiles = tuple(sorted(event["metadata"].get("profiles", ())))
    validator = _validator(event["class_uid"], profiles)
    problems = [
        f"{'/'.join(map(str, e.absolute_path)) or '<event>'}: {e.message}"
        for e in validator.iter_errors(event)
    ]
    assert not problems, problems
    # What the JSON Schema cannot say: the derived ids agree.
    assert event["type_uid"] == event["class_uid"] * 100 + event["activity_id"]
    klass = next(c for c in CLASSES if c.uid == event["class_uid"])
    assert event["category_uid"] == klass.category_uid

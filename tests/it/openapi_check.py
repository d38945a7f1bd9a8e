#!/usr/bin/env python3
"""Validates JSON answers of the collector's API against collector/openapi.json
with the `jsonschema` package (in the venv scripts/deps.sh creates), a
validator querywatch did not write. Used by tests/it/openapi.rs.

  openapi_check.py SPEC REF ANSWER.json   REF like #/components/schemas/QueriesAnswer

Exit 0 when the answer matches; else every error, one per line, and exit 1.
"""

import json
import sys

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012


def main():
    spec_path, ref, answer_path = sys.argv[1:4]
    with open(spec_path) as f:
        spec = json.load(f)
    with open(answer_path) as f:
        answer = json.load(f)
    # The whole document is one resource, so that the schemas' own
    # "#/components/..." references resolve inside it.
    registry = Registry().with_resource("urn:querywatch:openapi", Resource.from_contents(spec, default_specification=DRAFT202012))
    validator = Draft202012Validator({"$ref": "urn:querywatch:openapi" + ref}, registry=registry)
    errors = sorted(validator.iter_errors(answer), key=lambda e: list(e.absolute_path))
    for e in errors:
        print(f"{'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()

"""Evaluates flags against a running `gauntlet up` with the real OpenFeature Python SDK and its
OFREP provider (openfeature-sdk and openfeature-provider-ofrep from PyPI).

Usage: ofrep_sdk.py BASE_URL API_KEY REQUESTS_JSON

REQUESTS_JSON is a list of {"flag", "type" (boolean|string|integer|float|object), "default",
"context"}. Prints one JSON list with, for each request, the SDK's evaluation details: value,
variant, reason and error code.
"""

import json
import sys

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext


def main() -> None:
    base_url, key, requests = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    headers = (lambda: {"X-API-Key": key}) if key else None
    api.set_provider(OFREPProvider(base_url, headers_factory=headers))
    client = api.get_client("gauntlet-test")
    resolve = {
        "boolean": client.get_boolean_details,
        "string": client.get_string_details,
        "integer": client.get_integer_details,
        "float": client.get_float_details,
        "object": client.get_object_details,
    }
    out = []
    for r in requests:
        context = dict(r.get("context") or {})
        targeting_key = context.pop("targetingKey", None)
        details = resolve[r["type"]](
            r["flag"], r["default"], EvaluationContext(targeting_key, context)
        )
        out.append(
            {
                "flag": details.flag_key,
                "value": details.value,
                "variant": details.variant,
                "reason": getattr(details.reason, "value", details.reason),
                "errorCode": getattr(details.error_code, "value", details.error_code),
            }
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Evaluate one boolean flag against an OFREP server with the real OpenFeature SDK.

Usage: evaluate.py BASE_URL FLAG_KEY [true|false] [--bearer TOKEN] [--context JSON]

Prints one JSON line:
  {"value": ..., "reason": "...", "variant": ..., "error_code": ..., "error_message": ...}
and exits 0 even when the flag evaluation fails (the caller asserts on the JSON).
Exit code 2 means bad command-line arguments.
"""
import argparse
import json

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url", help="e.g. http://127.0.0.1:8080 (no /ofrep/v1 suffix)")
    parser.add_argument("flag_key")
    parser.add_argument("default", nargs="?", default="true", choices=["true", "false"])
    parser.add_argument("--bearer", help="sent as 'Authorization: Bearer TOKEN'")
    parser.add_argument("--context", default="{}",
                        help='evaluation context as JSON, e.g. \'{"targetingKey": "svc-a", "env": "prod"}\'')
    args = parser.parse_args()

    headers = {"Authorization": f"Bearer {args.bearer}"} if args.bearer else None
    api.set_provider(OFREPProvider(args.base_url, headers_factory=(lambda: headers) if headers else None))

    attributes = json.loads(args.context)
    context = EvaluationContext(targeting_key=attributes.pop("targetingKey", None), attributes=attributes)

    details = api.get_client().get_boolean_details(args.flag_key, args.default == "true", context)
    print(json.dumps({
        "value": details.value,
        "reason": str(details.reason) if details.reason is not None else None,
        "variant": details.variant,
        "error_code": str(details.error_code) if details.error_code is not None else None,
        "error_message": details.error_message,
    }))


if __name__ == "__main__":
    main()

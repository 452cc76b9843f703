"""Sign a request body the way Slack does, with Slack's own SDK.

    sign.py SIGNING_SECRET TIMESTAMP < body

Prints one JSON line: {"timestamp": ..., "signature": "v0=..."}; the SDK's
verifier checks the signature it made (with the same timestamp) before printing.
"""
import json
import sys

from slack_sdk.signature import SignatureVerifier


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: sign.py SIGNING_SECRET TIMESTAMP < body", file=sys.stderr)
        return 2
    secret, timestamp = sys.argv[1], sys.argv[2]
    body = sys.stdin.buffer.read().decode("utf-8")
    verifier = SignatureVerifier(signing_secret=secret, clock=_Clock(int(timestamp)))
    signature = verifier.generate_signature(timestamp=timestamp, body=body)
    if not verifier.is_valid(body=body, timestamp=timestamp, signature=signature):
        print("slack_sdk did not accept its own signature", file=sys.stderr)
        return 1
    print(json.dumps({"timestamp": timestamp, "signature": signature}))
    return 0


class _Clock:
    """The SDK checks the timestamp against its clock: pin it to the request's."""

    def __init__(self, now: int) -> None:
        self._now = now

    def now(self) -> float:
        return float(self._now)


if __name__ == "__main__":
    sys.exit(main())

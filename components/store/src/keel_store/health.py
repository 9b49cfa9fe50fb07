"""``python3 -m keel_store.health [ENDPOINT]``: is the local store member healthy?

The same test ``etcdctl endpoint health`` makes: a linearizable read, which only
succeeds when the member has a leader and can reach a quorum. A permission error
also counts as healthy (the member answered), as with etcdctl.
"""

from __future__ import annotations

import sys

from keel_store.client import Client, StoreError


def check(endpoint: str, timeout: float = 5.0) -> tuple[bool, str]:
    """(healthy, explanation) for the member at ``endpoint``."""
    try:
        with Client(endpoint, timeout=timeout) as client:
            client.get("health")
    except StoreError as exc:
        if exc.code == "PERMISSION_DENIED":
            return True, f"{endpoint} is healthy (permission denied is an answer)"
        return False, f"{endpoint} is unhealthy: {exc}"
    return True, f"{endpoint} is healthy: a linearizable read succeeded"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    healthy, text = check(args[0] if args else "127.0.0.1:2379")
    print(text)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())

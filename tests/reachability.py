"""`python -m tests.reachability DATABASE_URL REDIS_URL`: exits 0 when both answer, else says which does not."""

import socket
import sys
from urllib.parse import urlsplit


def reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError as exc:
        print(f"{parts.scheme} at {parts.hostname}:{parts.port or default_port} is unreachable: {exc}")
        return False


if __name__ == "__main__":
    database_url, redis_url = sys.argv[1], sys.argv[2]
    ok = reachable(database_url, 5432) & reachable(redis_url, 6379)
    sys.exit(0 if ok else 1)

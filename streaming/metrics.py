"""Prometheus metrics of one process (served at /metrics; scrape every daphne process on its own port).

Observed once per generation, per published delta or per socket, never per token: the hot path only
counts tokens in memory and adds them when a delta is published.
"""

from prometheus_client import Counter, Gauge, Histogram

GENERATIONS_ACTIVE = Gauge("chat_generations_active", "Answers being written by this process.")
WATCHERS_ACTIVE = Gauge("chat_watchers_active", "Client connections (WebSockets, event streams) watching answers.")
SOCKETS_OPEN = Gauge("chat_sockets_open", "Authenticated chat WebSockets open on this process.")
BUS_SUBSCRIPTIONS = Gauge(
    "chat_bus_subscriptions", "Subscriptions of this process's watchers, sockets and engine to event groups."
)
TIME_TO_FIRST_TOKEN = Histogram(
    "chat_time_to_first_token_seconds",
    "From the start of a generation to its first text published to watchers (the model's time included).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DELTA_INTERVAL = Histogram(
    "chat_inter_delta_seconds",
    "Gaps between consecutive deltas of one answer as published to watchers (after coalescing).",
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
TOKENS = Counter("chat_tokens_total", "Text pieces received from the model server (about one per token).")
GENERATIONS = Counter("chat_generations_total", "Answers that ended, by final status.", ["status"])
ERRORS = Counter("chat_generation_errors_total", "Answers that ended in error, by error code.", ["code"])
BUS_DROPPED = Counter(
    "chat_bus_dropped_total", "Events for other processes that the channel layer did not take (lost; repaired)."
)
BUS_OUTAGES = Counter("chat_bus_outages_total", "Times the channel layer became unreachable from this process.")

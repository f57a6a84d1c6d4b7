"""The HTTP API: REST resources, event streams of answers, and an OpenAI-compatible endpoint.

Views here translate HTTP to the same services the WebSocket uses (`streaming.services`, `conversations.services`
and `conversations.selectors`) and back; answers stream through the same `Watcher` as a socket's.
"""

"""The dev upstream: an OpenAI-compatible SIMULATOR of a model server, for development, tests and benchmarks.

A leaf app: it imports nothing of the chat. Production code loads `devllm.simulator` lazily, and only when
no LLM_BASE_URL is configured (see streaming.upstream).
"""

"""Fixtures of the in-process streaming tests: the test upstream as the model server, and this loop's engine."""

import pytest

from streaming.lifecycle import get_engine


@pytest.fixture
def llm(settings, upstream):
    settings.LLM_BASE_URL = upstream.base_url
    settings.LLM_MODELS = ["dev"]
    settings.LLM_SIMULATOR = True
    return upstream


@pytest.fixture
async def engine(llm):
    engine = get_engine()
    yield engine
    await engine.shutdown()

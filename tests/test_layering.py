"""The import structure (docs/architecture.md): the record never imports the live side, imports run one way
down the layers, no module imports itself back through others, and production code loads the simulator only
when no model server is configured."""

import ast
import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

# Top to bottom: a module may import the modules of the layers below its own, and of its own layer, never of a
# layer above. Every module of the project is in exactly one layer (a new one must be placed here).
LAYERS: list[list[str]] = [
    ["chatproject"],
    ["streaming.routing", "streaming.apps"],
    ["streaming.consumers", "streaming.access", "streaming.origin", "streaming.auth", "streaming.api"],
    ["streaming.actions", "streaming.watch"],
    ["streaming.lifecycle"],
    ["streaming.engine"],
    ["streaming.generation"],
    [
        "streaming.events",
        "streaming.protocol",
        "streaming.upstream",
        "streaming.transport",
        "streaming.aio",
        "streaming.sockets",
        "streaming.layers",
        "streaming.metrics",
    ],
    ["accounts"],
    ["conversations"],
    ["devllm"],
]
PACKAGES = ("chatproject", "accounts", "conversations", "streaming", "devllm")


def layer_of(module: str) -> int:
    for index, prefixes in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_layering.py: place it")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def imports(path: Path, module: str, *, top_level_only: bool) -> set[str]:
    """The project modules `module` imports (at load time only, or anywhere in it)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes: list[ast.AST] = list(tree.body) if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package
                package = module.split(".")[: -node.level + (1 if path.name == "__init__.py" else 0) or None]
                base = ".".join([*package, node.module] if node.module else package)
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    known = modules()
    # A package's own __init__ (`from streaming import events`) is only a namespace here.
    return {name for name in names if name in known and name != module and name not in PACKAGES}


def test_every_import_runs_down_the_layers():
    wrong = []
    for module, path in modules().items():
        for imported in imports(path, module, top_level_only=False):
            if layer_of(imported) < layer_of(module):
                wrong.append(f"{module} imports {imported}")
    assert not wrong, "imports running back up:\n" + "\n".join(sorted(wrong))


def test_the_record_never_imports_the_live_side_or_the_simulator():
    wrong = [
        f"{module} imports {imported}"
        for module, path in modules().items()
        if module.startswith("conversations")
        for imported in imports(path, module, top_level_only=False)
        if not imported.startswith("conversations")
    ]
    assert not wrong, wrong


def test_no_import_circle():
    graph = {module: imports(path, module, top_level_only=True) for module, path in modules().items()}
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            raise AssertionError("import circle: " + " -> ".join([*trail[trail.index(module) :], module]))
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*trail, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_only_the_upstream_client_loads_the_simulator_and_only_lazily():
    for module, path in modules().items():
        if module.startswith("devllm") or module == "chatproject.settings":
            continue
        loaded = {name for name in imports(path, module, top_level_only=True) if name.startswith("devllm")}
        assert not loaded, f"{module} imports {loaded} at load time"
        anywhere = {name for name in imports(path, module, top_level_only=False) if name.startswith("devllm")}
        assert not anywhere or module == "streaming.upstream", f"{module} imports {anywhere}"


def test_with_a_model_server_configured_the_simulator_is_never_loaded():
    code = (
        "import sys, django; django.setup()\n"
        "import chatproject.asgi, chatproject.urls, chatproject.probes, streaming.upstream, streaming.consumers\n"
        "print(sorted(name for name in sys.modules if name.startswith('devllm.') and name != 'devllm.apps'))\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "SECRET_KEY": "layering-test-only",
        "LLM_BASE_URL": "http://127.0.0.1:9/v1",
        "LLM_MODELS": "some-model",
    }
    env.pop("LLM_SIMULATOR", None)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr

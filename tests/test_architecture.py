"""The rules of the house: which module of django_capi may import which.

``RULES`` is the source of truth; docs/architecture.md ("Rules of the house") mirrors it, and
a test below keeps the two together. Every import counts: at the top of a module, inside a
function (a lazy import still couples the modules), under ``TYPE_CHECKING``, relative
(``from . import x``, ``from ..x import y``) or absolute (``django_capi.x``).

Module names are relative to ``django_capi``: ``templatetags`` stands for every module of that
package, ``__init__`` is the package itself. Names starting with ``django.`` are Django's.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import django_capi

PACKAGE = Path(django_capi.__file__).parent
DOCS = PACKAGE.parent / "docs" / "architecture.md"

# The layers: every module of the package belongs to exactly one.
LAYERS: dict[str, tuple[str, ...]] = {
    # Runs inside the shop's request and transaction.
    "CAPTURE": (
        "registry", "events", "installation", "normalize", "validation", "sources", "context",
        "browser", "offline",
    ),
    # Below both wings: vocabularies, errors, text, settings, the models, the signals.
    "SHARED": ("constants", "exceptions", "text", "conf", "models", "signals"),
    # Applies capture to requests and templates.
    "REQUEST": ("middleware", "templatetags"),
    # Runs in workers (``dispatch`` after a commit): from the outbox to Meta and back.
    "DELIVERY": (
        "client", "outbox", "queries", "pixels", "delivery", "dispatch", "tasks", "alerts"
    ),
    # What operators use: actions, system checks, the admin and its views, the commands.
    "OPERATOR": ("operations", "checks", "admin", "dashboard", "charts", "management"),
    # ``AppConfig.ready()`` connects the wings; it may import anything.
    "WIRING": ("apps",),
    # The Graph API emulator and the pytest plugin.
    "TESTING": ("testing",),
    # ``import django_capi``: the lazy public API.
    "API": ("__init__",),
}  # fmt: skip
#: Groups across layers.
GROUPS: dict[str, tuple[str, ...]] = {
    # Meta's rules and plain text: no settings, no models, no database.
    "PURE": ("normalize", "validation", "sources", "text", "context", "offline"),
    "VIEWS": ("admin", "dashboard", "charts"),
}
EVERY = "every module"


class Rule(NamedTuple):
    """Modules ``who`` (layers, groups or modules) never import anything in ``never``."""

    who: tuple[str, ...]
    never: tuple[str, ...]
    why: str
    #: Modules among ``who`` the rule does not bind.
    exempt: tuple[str, ...] = ()


RULES = (
    Rule(
        ("CAPTURE", "SHARED"),
        ("REQUEST", "DELIVERY", "OPERATOR", "TESTING"),
        "capture never waits on delivery, and needs no request, view or command",
    ),
    Rule(("SHARED",), ("registry", "events"), "shared modules sit below capture"),
    Rule(
        ("PURE",),
        ("conf", "models", "signals", "registry", "events", "django.conf", "django.db"),
        "pure: no settings, no models, no database; callers pass what they read",
    ),
    Rule(
        ("DELIVERY",),
        ("registry", "events", "context", "REQUEST", "VIEWS", "management", "TESTING"),
        "the wings are apart: a worker needs no capture, request or view",
    ),
    Rule(
        ("client",),
        ("models", "outbox", "queries", "pixels", "delivery", "dispatch", "tasks", "alerts"),
        "the HTTP client sits at the bottom: it knows no rows",
    ),
    Rule(("outbox",), ("client",), "locking knows no HTTP: write-backs take plain values"),
    Rule(
        ("API",),
        ("DELIVERY", "OPERATOR", "TESTING"),
        "`import django_capi` runs in every process, the shop's first",
    ),
    Rule(
        (EVERY,),
        ("dashboard", "charts"),
        "a view is nobody's library: shared queries live in `queries`",
        exempt=("VIEWS",),
    ),
    Rule(
        (EVERY,),
        ("TESTING",),
        "the package never imports its test tools; `capi_fakegraph` serves the emulator",
        exempt=("TESTING", "management.commands.capi_fakegraph"),
    ),
)


def expand(names: tuple[str, ...]) -> tuple[str, ...]:
    """Layer and group names replaced by their modules; ``every module`` by every one."""
    every = tuple(module for modules in LAYERS.values() for module in modules)
    groups = {**LAYERS, **GROUPS, EVERY: every}
    return tuple(module for name in names for module in groups.get(name, (name,)))


# Reading the imports.


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, relative to django_capi
    line: int
    target: str  # "django_capi" modules relative to it, anything else absolute
    internal: bool
    lazy: bool  # inside a function
    type_checking: bool
    #: A name taken from ``target`` that is not a module (``from .x import name``, ``x.name``).
    name: str | None = None
    #: ``x.name`` on a module imported earlier, not an import statement.
    attribute: bool = False


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def package_modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {
        module_name(path, root): path
        for path in sorted(root.rglob("*.py"))
        if "migrations" not in path.relative_to(root).parts
    }


def imports_of(source: str, module: str, modules: set[str], is_package: bool) -> list[Import]:
    """Every import in ``source`` (the module ``module``), with the names it binds used as
    attributes (``checks._x`` after ``from . import checks``)."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    package = "" if package == "__init__" else package  # django_capi itself
    found: list[Import] = []
    bound: dict[str, str] = {}  # a local name: the django_capi module it stands for

    def internal(absolute: str) -> str | None:
        if absolute == "django_capi":
            return "__init__"
        if absolute.startswith("django_capi."):
            return absolute.removeprefix("django_capi.")
        return None

    def visit(node: ast.AST, lazy: bool, type_checking: bool) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            lazy = True
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                visit(child, lazy, True)
            for child in node.orelse:
                visit(child, lazy, type_checking)
            return
        here = {"line": getattr(node, "lineno", 0), "lazy": lazy, "type_checking": type_checking}
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = internal(alias.name)
                found.append(
                    Import(module, target=target or alias.name, internal=bool(target), **here)
                )
                if target and alias.asname:
                    bound[alias.asname] = target
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                relative = ".".join([*base_parts, *([node.module] if node.module else [])])
                absolute = f"django_capi.{relative}" if relative else "django_capi"
            else:
                absolute = node.module or ""
            base = internal(absolute)
            for alias in node.names:
                if base is None:
                    found.append(
                        Import(module, target=f"{absolute}.{alias.name}", internal=False, **here)
                    )
                    continue
                candidate = alias.name if base == "__init__" else f"{base}.{alias.name}"
                if candidate in modules:
                    found.append(Import(module, target=candidate, internal=True, **here))
                    bound[alias.asname or alias.name] = candidate
                else:
                    found.append(
                        Import(module, target=base, internal=True, name=alias.name, **here)
                    )
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
        ):
            target = bound[node.value.id]
            attribute = {"name": node.attr, "attribute": True}
            found.append(Import(module, target=target, internal=True, **attribute, **here))
        for child in ast.iter_child_nodes(node):
            visit(child, lazy, type_checking)

    visit(tree, lazy=False, type_checking=False)
    return found


def all_imports() -> list[Import]:
    modules = package_modules()
    names = set(modules)
    return [
        found
        for module, path in modules.items()
        for found in imports_of(path.read_text(), module, names, path.name == "__init__.py")
    ]


def covers(names: tuple[str, ...], module: str) -> bool:
    return any(module == name or module.startswith(f"{name}.") for name in names)


def where(found: Import) -> str:
    path = package_modules()[found.module].relative_to(PACKAGE.parent)
    how = ""
    if not found.attribute:
        how = " (lazily)" if found.lazy else " (for type checking)" if found.type_checking else ""
    return f"{path}:{found.line}{how}"


# The rules.


def rule_violations(imports: list[Import]) -> Iterator[str]:
    for number, rule in enumerate(RULES, 1):
        for found in imports:
            if not covers(expand(rule.who), found.module) or covers(
                expand(rule.exempt), found.module
            ):
                continue
            if found.attribute or (found.internal and found.target == found.module):
                continue
            if covers(expand(rule.never), found.target):
                shown = f"django_capi.{found.target}" if found.internal else found.target
                yield f"{where(found)} imports {shown}: rule {number}, {rule.why}"


def private_names(imports: list[Import]) -> Iterator[str]:
    for found in imports:
        name = found.name or ""
        dunder = name.startswith("__") and name.endswith("__")
        if found.internal and found.target != found.module and name.startswith("_") and not dunder:
            yield f"{where(found)} uses django_capi.{found.target}.{name}, a private name"


def cycles(imports: list[Import]) -> list[list[str]]:
    """The import cycles (strongly connected components), lazy imports included; imports made
    only for type checking never run and are left out."""
    graph: dict[str, set[str]] = {}
    for found in imports:
        if found.internal and not found.type_checking and found.target != found.module:
            graph.setdefault(found.module, set()).add(found.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def describe_cycle(component: list[str], imports: list[Import]) -> str:
    edges = {
        f"{where(found)} imports django_capi.{found.target}"
        for found in imports
        if found.internal
        and not found.attribute
        and not found.type_checking
        and found.module in component
        and found.target in component
        and found.target != found.module
    }
    return f"import cycle between {', '.join(component)}:\n    " + "\n    ".join(sorted(edges))


# The tests.


def test_every_module_has_a_layer_and_every_rule_names_real_modules() -> None:
    modules = set(package_modules())
    unplaced = sorted(m for m in modules if sum(covers(layer, m) for layer in LAYERS.values()) != 1)
    assert unplaced == [], f"put each of these in exactly one of LAYERS: {unplaced}"
    named = {
        name
        for rule in RULES
        for name in expand((*rule.who, *rule.never, *rule.exempt, *expand(tuple(GROUPS))))
    }
    stale = sorted(
        name
        for name in named
        if not name.startswith("django.") and not any(covers((name,), m) for m in modules)
    )
    assert stale == [], f"RULES name modules that do not exist: {stale}"


def test_no_module_breaks_a_rule_of_the_house() -> None:
    broken = sorted(set(rule_violations(all_imports())))
    assert broken == [], "\n" + "\n".join(broken)


def test_no_module_uses_a_private_name_of_another() -> None:
    used = sorted(set(private_names(all_imports())))
    assert used == [], "\n" + "\n".join(used)


def test_no_import_cycles() -> None:
    imports = all_imports()
    found = [describe_cycle(component, imports) for component in cycles(imports)]
    assert found == [], "\n" + "\n".join(found)


def docs_rows() -> list[str]:
    """The rows of docs/architecture.md's two tables: the layers, then the rules."""

    def names(items: tuple[str, ...]) -> str:
        return ", ".join(item if item.isupper() or item == EVERY else f"`{item}`" for item in items)

    rows = [f"| {name} | {names(modules)} |" for name, modules in {**LAYERS, **GROUPS}.items()]
    for number, rule in enumerate(RULES, 1):
        who = names(rule.who) + (f" but {names(rule.exempt)}" if rule.exempt else "")
        rows.append(f"| {number} | {who} | {names(rule.never)} | {rule.why} |")
    return rows


def test_the_docs_mirror_the_rules() -> None:
    docs = DOCS.read_text()
    missing = [row for row in docs_rows() if row not in docs]
    assert missing == [], (
        "docs/architecture.md, Rules of the house, should list these rows:\n" + "\n".join(missing)
    )


def test_the_docs_name_every_module() -> None:
    """Each module appears in docs/architecture.md's tables, itself or as its folder."""
    docs = DOCS.read_text()
    packages = {module.rpartition(".")[0] for module in package_modules()}
    missing = []
    for module, path in package_modules().items():
        if module in packages and path.name == "__init__.py" and module != "__init__":
            continue  # a package is named by its modules
        parts = module.split(".")
        names = [f"`{'/'.join(parts)}.py`"] + [
            f"`{'/'.join(parts[:n])}/`" for n in range(1, len(parts))
        ]
        if not any(name in docs for name in names):
            missing.append(names[0])
    assert missing == [], f"docs/architecture.md does not mention {missing}"


def test_the_reader_sees_lazy_relative_absolute_and_private_imports() -> None:
    source = """
from .. import conf, signals as sig
from ..models import OutboxEvent
from ..client import _classify
import django_capi.outbox as box
from django.db import connections
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from ..tasks import drain_outbox

def later():
    from django_capi import delivery
    from django_capi.dispatch import wake_drainer
    return conf._clear_cache, sig.send_safely, box._lock
"""
    modules = {"conf", "signals", "models", "client", "outbox", "tasks", "delivery", "dispatch"}
    found = imports_of(source, "templatetags.capi", modules, is_package=False)
    seen = {(i.target, i.name, i.lazy, i.type_checking) for i in found if i.internal}
    assert seen >= {
        ("conf", None, False, False),
        ("signals", None, False, False),
        ("models", "OutboxEvent", False, False),
        ("client", "_classify", False, False),
        ("outbox", None, False, False),
        ("tasks", "drain_outbox", False, True),
        ("delivery", None, True, False),
        ("dispatch", "wake_drainer", True, False),
        ("conf", "_clear_cache", True, False),
        ("signals", "send_safely", True, False),
        ("outbox", "_lock", True, False),
    }
    assert ("django.db.connections", False) in {(i.target, i.internal) for i in found}
    private = {i.name for i in found if (i.name or "").startswith("_")}
    assert private == {"_classify", "_clear_cache", "_lock"}
    root = imports_of("from .tasks import drain_outbox", "__init__", modules, is_package=True)
    assert [(i.target, i.name) for i in root] == [("tasks", "drain_outbox")]

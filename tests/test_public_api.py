"""The public API an app imports is `creditapp`'s listing (creditapp.PUBLIC): every name resolves,
says what it is, and `import creditapp` alone stays light (no Flask)."""
import ast
import subprocess
import sys

import pytest

import creditapp
from creditapp.testing.servers import ROOT

EXAMPLE = ROOT / "examples" / "sketch"


@pytest.mark.parametrize("name", creditapp.__all__)
def test_every_public_name_resolves_and_says_what_it_is(name):
    module, what = creditapp.PUBLIC[name]
    value = getattr(creditapp, name)
    assert value is getattr(__import__(module, fromlist=[name]), name)
    assert what.strip() and "\n" not in what
    assert name in dir(creditapp)


def test_the_listing_is_all_and_nothing_else_is_public():
    assert creditapp.__all__ == list(creditapp.PUBLIC)
    with pytest.raises(AttributeError, match="no attribute 'teleport'"):
        creditapp.teleport  # noqa: B018


def test_the_names_of_creditapp_credits_are_the_public_ones():
    import creditapp.credits

    for name in creditapp.credits.__all__:
        assert getattr(creditapp.credits, name) is getattr(creditapp, name)


def test_importing_creditapp_loads_no_flask():
    script = "import sys, creditapp; creditapp.__all__; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
             "('flask', 'sqlalchemy', 'werkzeug') or m.startswith('creditapp.')))"
    loaded = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_the_example_app_imports_only_the_public_api():
    modules = ("testing", "settings", "ledger")  # the public modules, beside the names of __all__
    for path in sorted(EXAMPLE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("creditapp"):
                assert node.module in ("creditapp", *(f"creditapp.{m}" for m in modules)), f"{path.name}: from {node.module}"
                if node.module == "creditapp":
                    assert {alias.name for alias in node.names} <= {*creditapp.__all__, *modules}, path.name
            elif isinstance(node, ast.Import):
                assert not any(alias.name.startswith("creditapp.") for alias in node.names), path.name

"""The code's shape: the ledger stands alone, and no import depends on import order."""
import ast
import re
import subprocess
import sys

from creditapp.testing.servers import ROOT

PACKAGE = ROOT / "creditapp"
WEB = ("flask", "flask_sqlalchemy", "flask_smorest", "flask_jwt_extended", "flask_limiter", "werkzeug",
       "webargs", "creditapp.api", "creditapp.app")


def modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts:
            continue  # Alembic's scripts, run by Alembic, never imported
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def web_modules_loaded_by(modules: str) -> str:
    result = run(
        f"import sys, {modules}\n"
        f"web = sorted(m for m in sys.modules if m.split('.')[0] in {WEB!r} or m.startswith({WEB!r}))\n"
        "print(web)\n"
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_ledger_loads_no_web_module():
    loaded = web_modules_loaded_by("creditapp.ledger")
    assert loaded == "[]", f"the ledger loads web modules: {loaded}"


def test_payments_load_no_web_module_and_reach_balances_only_through_the_ledger():
    loaded = web_modules_loaded_by("creditapp.payments.service, creditapp.payments.providers.stripe")
    assert loaded == "[]", f"payments load web modules: {loaded}"
    for path in (PACKAGE / "payments").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                inside = path.parent.relative_to(PACKAGE / "payments").parts
                target = (node.module or "").split(".")[0]
                target = "webhooks.outbox" if node.module == "webhooks.outbox" else target
                # Out of the package (.. from payments/, ... from providers/): only to the ledger,
                # and notices.py to the webhooks outbox (the events a move tells operators).
                if node.level >= len(inside) + 2:
                    allowed = {"ledger", "webhooks.outbox"} if path.name == "notices.py" else {"ledger"}
                    assert target in allowed, f"{path.name} imports {ast.unparse(node)}"


def test_webhooks_load_no_web_module_and_reach_only_the_ledger():
    """queue.py is their Flask side: it puts deliveries on the jobs' queue; an administrator's
    change of an endpoint is logged in admin_actions, in the change's transaction."""
    loaded = web_modules_loaded_by("creditapp.webhooks.outbox, creditapp.webhooks.delivery, creditapp.webhooks.endpoints")
    assert loaded == "[]", f"webhooks load web modules: {loaded}"
    for path in (PACKAGE / "webhooks").rglob("*.py"):
        allowed = {"queue.py": ("ledger", "jobs", "database"), "endpoints.py": ("ledger", "admin_actions"),
                   "delivery.py": ("ledger", "admin_actions")}.get(path.name, ("ledger",))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                assert (node.module or "").split(".")[0] in allowed, f"{path.name} imports {ast.unparse(node)}"


def test_the_admin_actions_log_loads_no_web_module():
    """The dashboard, the CLI or a script read it without the web layer."""
    loaded = web_modules_loaded_by("creditapp.admin_actions")
    assert loaded == "[]", f"admin_actions loads web modules: {loaded}"


def test_the_ledger_imports_only_itself_from_creditapp():
    for path in (PACKAGE / "ledger").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1, f"{path.name} imports from outside the ledger: {ast.unparse(node)}"
                assert not (node.module or "").startswith("creditapp"), f"{path.name}: {ast.unparse(node)}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("creditapp") for a in node.names), f"{path.name}: {ast.unparse(node)}"


def test_every_module_imports_first_on_its_own():
    """A cycle kept alive by import order breaks when a module in it is imported first."""
    result = run(
        "import importlib, sys\n"
        f"for name in {modules()!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'creditapp' or m.startswith('creditapp.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        print(f'{name}: {type(exc).__name__}: {exc}')\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "", result.stdout


def test_the_dashboard_figures_load_no_web_module_and_read_only_the_tables_they_show():
    loaded = web_modules_loaded_by("creditapp.dashboard.figures, creditapp.dashboard.chart, "
                                   "creditapp.dashboard.verify_runs")
    assert loaded == "[]", f"the dashboard's figures load web modules: {loaded}"
    allowed = {"ledger", "payments", "jobs", "admin_actions"}  # balances through the ledger; purchases' and jobs' tables; the actions log
    for path in (PACKAGE / "dashboard").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                target = (node.module or "").split(".")
                assert target[0] in allowed, f"{path.name} imports {ast.unparse(node)}"
                if target[0] in ("payments", "jobs"):
                    assert target[1:] == ["tables"], f"{path.name} imports {ast.unparse(node)}"


def test_the_package_imports_no_top_level_config_module():
    """An app built on creditapp has a config.py of its own: the package must never import one."""
    for path in PACKAGE.rglob("*.py"):
        for line in path.read_text().splitlines():
            assert not re.match(r"\s*(from config\b|import config\b)", line), f"{path}: {line}"

"""creditapp as a package, as an app that builds on it gets it: the wheel `python -m build` makes,
installed in a fresh virtual environment outside the checkout with examples/sketch's own
requirements, runs the example's tests there (its pytest kit from the entry point, on SQLite and
on PostgreSQL), and its console script migrates and audits the example's database."""
import os
import re
import shutil
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest

from creditapp import __version__
from creditapp.testing.databases import postgres_database, server_url
from creditapp.testing.servers import ROOT

EXAMPLE = ROOT / "examples" / "sketch"
# One environment for the module: its tests go to one xdist worker (Makefile: --dist loadgroup).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("package")]


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def constraints(path: Path) -> Path:
    """requirements.txt's pins without their extras (pip refuses extras in constraints): the fresh
    environment gets the versions the suite ran against."""
    lines = [re.sub(r"\[[^]]*\]", "", line) for line in (ROOT / "requirements.txt").read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The wheel in a new virtual environment, and the example app copied next to it (so nothing of
    the checkout is importable): {"python", "bin", "app", "env"}."""
    where = tmp_path_factory.mktemp("package")
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(where / "dist"), str(ROOT)], timeout=600)
    wheel, = (where / "dist").glob("creditapp-*.whl")
    assert wheel.name == f"creditapp-{__version__}-py3-none-any.whl"
    run([sys.executable, "-m", "venv", str(where / "venv")], timeout=300)
    bin_dir = where / "venv" / "bin"
    app = where / "app"
    shutil.copytree(EXAMPLE, app, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    run([str(bin_dir / "pip"), "install", "--quiet", f"{wheel}[testing]", "-r", str(app / "requirements.txt"),
         "-c", str(constraints(where / "constraints.txt"))], timeout=900)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_URL", "AI_STUB_", "JOBS_", "PYTHONPATH", "TEST_DATABASE_URL", "FLASK_",
                                "VIRTUAL_ENV", "CREDITAPP_"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return {"python": str(bin_dir / "python"), "bin": bin_dir, "app": app, "env": env}


def test_the_package_is_the_installed_one_with_its_files(installed):
    code = ("import creditapp, importlib.resources as r; root = r.files('creditapp'); print(creditapp.__file__); "
            "print(*(int((root / p).is_file()) for p in ('migrations/env.py', 'migrations/alembic.ini', "
            "'migrations/versions/0001_initial_ledger.py', 'templates/dashboard/index.html')))")
    found, files = run([installed["python"], "-c", code], cwd=installed["app"], env=installed["env"],
                       timeout=120).stdout.splitlines()
    assert found.startswith(str(installed["bin"].parent)) and "site-packages" in found
    assert files == "1 1 1 1"
    shown = run([str(installed["bin"] / "creditapp"), "--version"], cwd=installed["app"], env=installed["env"],
                timeout=120).stdout
    assert shown.splitlines()[0] == f"creditapp {__version__}"
    plugins = run([installed["python"], "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", "--trace-config"],
                  cwd=installed["app"], env=installed["env"], timeout=120).stdout
    assert "creditapp.testing" in plugins  # from the entry point: the example's conftest names no plugin


def test_the_example_app_passes_its_tests_on_sqlite_and_postgresql(installed, postgres_url):
    env = {**installed["env"], "TEST_DATABASE_URL": server_url()}  # the kit then runs every test on both
    result = run([installed["python"], "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA"], cwd=installed["app"],
                 env=env, timeout=900)
    passed = len(re.findall(r"^PASSED ", result.stdout, re.M))
    tests = len(re.findall(r"^def test_", (EXAMPLE / "test_sketch.py").read_text(), re.M))
    assert passed == 2 * tests and "[postgresql]" in result.stdout, result.stdout[-3000:]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_console_script_migrates_and_verifies_the_example_apps_database(installed, database, tmp_path):
    context = postgres_database() if database == "postgresql" else nullcontext(f"sqlite:///{tmp_path}/sketch.db")
    with context as url:
        env = {**installed["env"], "DATABASE_URL": url}
        creditapp = [str(installed["bin"] / "creditapp"), "--app", "wsgi_sketch"]
        run([*creditapp, "db", "upgrade", "heads"], cwd=installed["app"], env=env, timeout=300)
        heads = run([*creditapp, "db", "current"], cwd=installed["app"], env=env, timeout=120).stdout
        assert "sketch_0001" in heads and "(head)" in heads
        made = run([*creditapp, "users", "create", "ada", "--password", "correct-horse-battery"],
                   cwd=installed["app"], env=env, timeout=120)
        assert "ada" in made.stdout
        audit = run([*creditapp, "credits", "verify"], cwd=installed["app"], env=env, timeout=120)
        assert "ledger ok" in audit.stdout, audit.stdout
        # Without --app: creditapp's own app, on the same database.
        plain = run([str(installed["bin"] / "creditapp"), "credits", "verify"], cwd=installed["app"], env=env,
                    timeout=120)
        assert "ledger ok" in plain.stdout


def test_the_default_sqlite_database_is_in_the_working_directory(installed, tmp_path):
    run([str(installed["bin"] / "creditapp"), "db", "upgrade"], cwd=tmp_path, env=installed["env"], timeout=300)
    assert (tmp_path / "instance" / "creditapp.db").is_file()
    assert not list((installed["bin"].parent).rglob("creditapp.db"))


def test_requirements_pin_every_runtime_dependency_within_the_packages_range():
    """`make install` takes requirements.txt, then the checkout with --no-deps: a dependency the
    package declares but requirements.txt leaves out would come at whatever version is newest."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pin = Requirement(line)
            pins[canonicalize_name(pin.name)] = next(iter(pin.specifier)).version
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dependency in map(Requirement, declared):
        name = canonicalize_name(dependency.name)
        assert name in pins, f"{dependency.name} is not pinned in requirements.txt"
        assert dependency.specifier.contains(pins[name]), f"{dependency.name}=={pins[name]} is outside {dependency}"


def test_the_kit_loaded_in_every_pytest_run_reads_no_setting_until_an_app_is_made(tmp_path):
    """The pytest11 entry point loads the kit into the tests of every project of the environment,
    creditapp's or not: a creditapp setting that cannot be read (one meant for another process)
    must not stop them from starting."""
    (tmp_path / "test_unrelated.py").write_text("def test_unrelated():\n    assert True\n")
    env = {**os.environ, "DB_POOL_SIZE": "ten", "CREDITAPP_ENV": "staging", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "creditapp.testing",
                             str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout

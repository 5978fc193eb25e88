"""The Dockerfile and compose.yaml, without building or pulling an image (CI reaches no registry
of images): compose.yaml parses and wires the API, the job worker, the migration, PostgreSQL and
Redis together; the image's files exist; and the commands the image and compose run (migrate,
serve, work) do their jobs here, in a folder laid out as the image's /app, with compose's own
environment pointed at this machine's PostgreSQL and Redis."""
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from creditapp.testing.brokers import broker_queue
from creditapp.testing.databases import postgres_database
from creditapp.testing.servers import ROOT, free_port, start_process, stop, wait_until_up

from .test_serve import an_async_generation_runs_to_its_charge

pytestmark = pytest.mark.slow
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
CREDITAPP = str(Path(sys.executable).parent / "creditapp")  # the console script, as pip installs it in the image


def test_compose_starts_the_api_a_worker_postgresql_and_redis_in_order():
    services = COMPOSE["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker"}
    for name in ("migrate", "api", "worker"):
        assert services[name]["build"] == "." and services[name]["environment"] == COMPOSE["x-creditapp"]["environment"]
    assert services["migrate"]["command"] == ["creditapp", "--app", "wsgi", "db", "upgrade"]
    assert services["worker"]["command"] == ["creditapp", "--app", "wsgi", "jobs", "worker"]
    assert "command" not in services["api"]  # the image's CMD
    for name in ("api", "worker"):
        assert services[name]["depends_on"] == {"migrate": {"condition": "service_completed_successfully"},
                                                "redis": {"condition": "service_healthy"}}
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"
    environment = COMPOSE["x-creditapp"]["environment"]
    assert "@postgres:5432/" in environment["DATABASE_URL"]
    assert environment["JOBS_BROKER_URL"].startswith("redis://redis:6379/")
    assert environment["CREDITAPP_ENV"] == "production"
    # Compose's interpolation: ${NAME}, ${NAME:-default} or ${NAME:?message}, nothing else.
    for value in environment.values():
        for found in re.findall(r"\$\{([^}]*)\}", str(value)):
            assert re.fullmatch(r"[A-Z_]+(:-[^}]*|:\?[^}]*)?", found), found


def test_only_the_api_has_the_images_readyz_check_and_each_stop_lets_running_work_end():
    """The image's HEALTHCHECK asks 127.0.0.1:8000/readyz, where only the API listens: inherited by
    the worker it would mark it unhealthy forever (and fail `docker compose up --wait`). Docker's
    stop kills after 10 s by default; gunicorn lets streams end for up to STREAM_MAX_SECONDS + 10."""
    assert "/readyz" in DOCKERFILE
    services = COMPOSE["services"]
    for name in ("migrate", "worker"):
        assert services[name]["healthcheck"] == {"disable": True}, name
    assert "healthcheck" not in services["api"]

    def seconds(period: str) -> int:
        return sum(int(n) * {"m": 60, "s": 1}[unit] for n, unit in re.findall(r"(\d+)([ms])", period))

    assert seconds(services["api"]["stop_grace_period"]) > 300 + 10
    assert seconds(services["worker"]["stop_grace_period"]) > 120  # AI_TIMEOUT_SECONDS, a running job's call


def test_compose_config_is_valid_to_docker_compose_itself():
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed here; the other tests read compose.yaml themselves")
    result = subprocess.run([docker, "compose", "-f", str(ROOT / "compose.yaml"), "config", "--quiet"],
                            capture_output=True, text=True, env={**os.environ, "JWT_SECRET_KEY": "x" * 40})
    assert result.returncode == 0, result.stderr


def copied_files() -> list[str]:
    """What the Dockerfile copies into /app, and the CMD it runs there."""
    line, = re.findall(r"^COPY (.*) /app/$", DOCKERFILE, re.M)
    return line.split()


def test_the_image_copies_files_that_exist_and_runs_one_that_it_copies():
    for path in copied_files() + ["requirements.txt", "pyproject.toml", "README.md", "LICENSE", "creditapp"]:
        assert (ROOT / path).exists(), path
    cmd, = re.findall(r"^CMD (.*)$", DOCKERFILE, re.M)
    assert cmd == '["./serve"]' and "docker/serve" in copied_files()
    assert os.access(ROOT / "docker" / "serve", os.X_OK)


def environment(database_url: str, jobs: dict) -> dict:
    """compose's environment for the creditapp services, pointed at this machine's services."""
    values = {"JWT_SECRET_KEY": "docker-test-secret-that-is-long-enough-0123", "POSTGRES_PASSWORD": "unused"}

    def interpolate(value: str) -> str:
        def one(match):
            name, operator, rest = re.fullmatch(r"([A-Z_]+)(?:(:-|:\?)(.*))?", match.group(1)).groups()
            if name in values:
                return values[name]
            assert operator != ":?", f"compose refuses to start without {name}: {rest}"
            return rest or ""
        return re.sub(r"\$\{([^}]*)\}", one, value)

    env = {name: interpolate(str(value)) for name, value in COMPOSE["x-creditapp"]["environment"].items()}
    env.update(DATABASE_URL=database_url, **jobs, GUNICORN_WORKERS="2",
               RATELIMIT_STORAGE_URI="redis://127.0.0.1:6379/13", RATELIMIT_KEY_PREFIX=f"docker-{uuid.uuid4().hex[:8]}",
               TOKEN_BLOCKLIST_URL="redis://127.0.0.1:6379/12")
    assert env["JWT_SECRET_KEY"] == values["JWT_SECRET_KEY"] and env["AI_PROVIDER"] == "stub"
    keep = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "LC_ALL", "TMPDIR")}
    # The image's pip installs gunicorn and creditapp on its PATH; here they are beside this Python.
    keep["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    return {**keep, **env}


def test_the_images_commands_migrate_serve_and_run_jobs(tmp_path):
    app = tmp_path / "app"  # the image's WORKDIR, with what the Dockerfile copies there and nothing else
    app.mkdir()
    for path in copied_files():
        shutil.copy2(ROOT / path, app / Path(path).name)
    port = free_port()
    with postgres_database() as url, broker_queue("redis") as jobs:
        env = {**environment(url, jobs), "GUNICORN_BIND": f"127.0.0.1:{port}"}
        migrate = subprocess.run([CREDITAPP, *COMPOSE["services"]["migrate"]["command"][1:]], cwd=app, env=env,
                                 capture_output=True, text=True, timeout=300)
        assert migrate.returncode == 0, migrate.stderr[-3000:]
        api = start_process(["./serve"], env, tmp_path / "api.log", cwd=app)
        worker = start_process([CREDITAPP, *COMPOSE["services"]["worker"]["command"][1:]], env,
                               tmp_path / "worker.log", cwd=app)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_up(f"{url}/readyz", api, timeout=90)
            an_async_generation_runs_to_its_charge(url)  # by the worker, through Redis
            healthcheck, = re.findall(r"^    CMD (.*)$", DOCKERFILE, re.M)  # the HEALTHCHECK's, in the image's shell
            assert subprocess.run(["sh", "-c", healthcheck], cwd=app, env=env, timeout=30).returncode == 0
        finally:
            stop(worker)
            stop(api)
    log = (tmp_path / "api.log").read_text()
    assert "Booting worker" in log and "configuration error" not in log, log[-2000:]

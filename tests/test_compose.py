"""docker-compose.yml checked against the repository, since no Docker engine runs here.

Every build context, Dockerfile and mounted path must exist; every port and variable must be one the
services really read, with the value their settings default to.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml

from mercurystream.p1.config import P1Settings
from mercurystream.p2.config import P2Settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
SETTINGS = {"services/p1/Dockerfile": P1Settings, "services/p2/Dockerfile": P2Settings}
# Created by the user's first run if absent; compose would otherwise make it root-owned.
MAY_BE_CREATED = {"./data"}
LONG_RUNNING = [name for name, svc in SERVICES.items() if svc.get("restart", "no") != "no"]
_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def resolve(value: object) -> str:
    """A compose value with every ``${VAR:-default}`` replaced by its default (empty when none)."""
    return _VAR.sub(lambda m: m.group(2) or "", str(value))


def default(settings: type, field: str) -> object:
    return settings.model_fields[field].default


def settings_for(name: str) -> type | None:
    build = SERVICES[name].get("build")
    return SETTINGS.get(build["dockerfile"]) if build else None


def environment(name: str) -> dict[str, str]:
    env = SERVICES[name].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: resolve(v) for k, v in env.items()}


def published(name: str) -> list[tuple[int, int]]:
    """``(host port, container port)`` for each ``[ip:]host:container`` mapping."""
    out = []
    for spec in SERVICES[name].get("ports", []):
        parts = resolve(spec).split("/")[0].split(":")
        out.append((int(parts[-2]), int(parts[-1])))
    return out


def bind_mounts(name: str) -> list[tuple[str, str, str]]:
    """``(host path, container path, mode)`` for volumes that are paths, not named volumes."""
    out = []
    for spec in SERVICES[name].get("volumes", []):
        parts = resolve(spec).split(":")
        if parts[0].startswith((".", "/")):
            out.append((parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"))
    return out


def dockerfile_workdir(dockerfile: Path) -> str:
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", dockerfile.read_text(), re.MULTILINE)
    return workdirs[-1]


CLUSTER = ("nats", "p1-cluster", "p2-shard-0", "p2-shard-1")


def test_services_network_and_profiles() -> None:
    assert set(SERVICES) >= {"p1", "p2", "prometheus", "grafana", "p2-replay", "replay", *CLUSTER}
    assert "mercury" in COMPOSE["networks"]
    for name, svc in SERVICES.items():
        assert svc.get("networks") == ["mercury"], name
    for name in ("p1", "p2", "prometheus", "grafana"):
        assert "profiles" not in SERVICES[name], name
    for name in ("p2-replay", "replay"):
        assert SERVICES[name]["profiles"] == ["replay"], name
    for name in CLUSTER:
        assert SERVICES[name]["profiles"] == ["cluster"], name


@pytest.mark.parametrize("name", [n for n, s in SERVICES.items() if "build" in s])
def test_build_context_and_dockerfile_exist(name: str) -> None:
    build = SERVICES[name]["build"]
    context = REPO / build["context"]

    assert context.resolve() == REPO, "the Dockerfiles pip-install the project from the repository root"
    assert (context / build["dockerfile"]).is_file()
    assert settings_for(name) is not None


@pytest.mark.parametrize("name", list(SERVICES))
def test_mounted_paths_exist(name: str) -> None:
    for host, container, _ in bind_mounts(name):
        assert PurePosixPath(container).is_absolute(), f"{name}: {container}"
        if host in MAY_BE_CREATED:
            continue
        assert (REPO / host).exists(), f"{name}: {host} does not exist in the repository"
    for spec in SERVICES[name].get("volumes", []):
        source = resolve(spec).split(":")[0]
        if not source.startswith((".", "/")):
            assert source in COMPOSE.get("volumes", {}), f"{name}: named volume {source} is not declared"


@pytest.mark.parametrize(
    "name", [n for n in SERVICES if settings_for(n) is not None and "entrypoint" not in SERVICES[n]]
)
def test_environment_names_and_ports_match_the_settings(name: str) -> None:
    settings = settings_for(name)
    fields = {f.upper() for f in settings.model_fields}
    env = environment(name)

    unknown = sorted(k for k in env if k.upper() not in fields)
    assert not unknown, f"{name}: variables {settings.__name__} does not read: {unknown}"
    for key, value in env.items():
        if key.endswith("PORT"):
            assert int(value) == default(settings, key), f"{name}: {key}={value}"
    settings(**env)  # every value, defaults substituted, passes validation


@pytest.mark.parametrize(
    "name", [n for n in SERVICES if settings_for(n) is P2Settings and "entrypoint" not in SERVICES[n]]
)
def test_p2_listens_everywhere_and_publishes_its_ports(name: str) -> None:
    env = environment(name)
    container_ports = sorted(c for _, c in published(name))

    assert env["HOST"] == "0.0.0.0"
    if env.get("P2_SOURCE", "tcp") == "nats":  # a shard reads the stream: no TCP input to publish
        assert "PORT" not in env
        assert container_ports == [default(P2Settings, "METRICS_PORT")]
    else:
        assert container_ports == sorted([default(P2Settings, "PORT"), default(P2Settings, "METRICS_PORT")])


def test_p1_reaches_p2_and_the_real_feed() -> None:
    env = environment("p1")

    assert env["P2_HOST"] == "p2"
    assert int(env["P2_PORT"]) == default(P2Settings, "PORT")
    assert env["COINBASE_WS_URL"] == default(P1Settings, "COINBASE_WS_URL")
    assert [c for _, c in published("p1")] == [default(P1Settings, "P1_METRICS_PORT")]


def test_observability_ports() -> None:
    assert published("prometheus") == [(9091, 9090)]
    assert published("grafana") == [(3000, 3000)]


def test_host_ports_are_unique_and_loopback_only() -> None:
    hosts = [h for name in SERVICES for h, _ in published(name)]
    assert len(hosts) == len(set(hosts))
    for name, svc in SERVICES.items():
        for spec in svc.get("ports", []):
            assert str(spec).startswith("127.0.0.1:"), f"{name}: {spec} is published on every interface"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_services_have_healthchecks_and_restart(name: str) -> None:
    svc = SERVICES[name]
    test = svc["healthcheck"]["test"]

    assert svc["restart"] in ("unless-stopped", "always", "on-failure")
    assert test[0] == "CMD" and len(test) > 1, f"{name}: exec-form healthcheck expected"
    if settings_for(name) is not None:
        assert test[1] == "python" and "/metrics" in test[-1], "slim images have no curl: probe with python"


def test_depends_on_waits_for_healthy_services() -> None:
    seen = 0
    for name, svc in SERVICES.items():
        for dep, spec in svc.get("depends_on", {}).items():
            seen += 1
            assert spec["condition"] == "service_healthy", f"{name} -> {dep}"
            assert not SERVICES[dep].get("healthcheck", {}).get("disable"), f"{dep} has no healthcheck"
    assert seen >= 3
    assert set(SERVICES["p1"]["depends_on"]) == {"p2"}
    assert set(SERVICES["replay"]["depends_on"]) == {"p2-replay"}


@pytest.mark.parametrize("name", [n for n in SERVICES if settings_for(n) is P2Settings])
def test_p2_writes_recordings_and_incidents_into_mounted_data(name: str) -> None:
    workdir = PurePosixPath(dockerfile_workdir(REPO / SERVICES[name]["build"]["dockerfile"]))
    mounts = {host: PurePosixPath(container) for host, container, _ in bind_mounts(name)}
    data = mounts["./data"]
    env = environment(name)

    for key in ("INCIDENTS_DIR", "RECORD_FILE", "DRIFT_SAMPLE_FILE"):
        path = workdir / env.get(key, str(default(P2Settings, key)))
        assert data in path.parents, f"{name}: {key} resolves to {path}, outside the mounted {data}"


def test_replay_profile_sends_to_the_isolated_p2() -> None:
    replay = SERVICES["replay"]
    live_env, replay_env = environment("p2"), environment("p2-replay")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    argv = replay["entrypoint"]

    assert argv[0] in scripts
    assert argv[argv.index("--host") + 1] == "p2-replay"
    assert int(argv[argv.index("--port") + 1]) == default(P2Settings, "PORT")
    assert replay["healthcheck"]["disable"] is True
    assert all(mode == "ro" for _, _, mode in bind_mounts("replay"))
    assert replay_env["INCIDENTS_DIR"] != live_env["INCIDENTS_DIR"]
    assert replay_env["RECORD"] == "false"


def test_grafana_admin_login_defaults_to_the_documented_one() -> None:
    env = SERVICES["grafana"]["environment"]

    assert env["GF_SECURITY_ADMIN_USER"] == "${GF_SECURITY_ADMIN_USER:-admin}"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "${GF_SECURITY_ADMIN_PASSWORD:-mercury}"
    assert environment("grafana")["GF_SECURITY_ADMIN_PASSWORD"] == "mercury"


def test_nats_runs_jetstream_on_a_volume_with_a_healthcheck() -> None:
    nats = SERVICES["nats"]
    command = nats["command"]

    assert nats["image"].startswith("nats:")
    assert "--jetstream" in command or "-js" in command
    store = command[command.index("--store_dir") + 1]
    volumes = {resolve(v).split(":")[1]: resolve(v).split(":")[0] for v in nats["volumes"]}
    assert volumes[store] in COMPOSE["volumes"], "the stream must outlive the container"
    monitor = command[command.index("--http_port") + 1]
    probe = nats["healthcheck"]["test"]
    assert probe[0] == "CMD" and f":{monitor}/healthz" in probe[-1] and "js-enabled-only=true" in probe[-1]
    assert (4222, 4222) in published("nats")


def test_cluster_profile_runs_two_shards_of_one_stream() -> None:
    p1 = environment("p1-cluster")
    shards = [environment(f"p2-shard-{i}") for i in range(2)]

    assert p1["P1_SINK"] == "nats"
    url, stream = p1["NATS_URL"], p1.get("NATS_STREAM", default(P1Settings, "NATS_STREAM"))
    assert url == "nats://nats:4222"
    assert sorted(env["P2_SHARD"] for env in shards) == ["0/2", "1/2"]
    for env in shards:
        assert env["P2_SOURCE"] == "nats" and env["NATS_URL"] == url
        assert env.get("NATS_STREAM", default(P2Settings, "NATS_STREAM")) == stream
    for key in ("RECORD_FILE", "INCIDENTS_DIR", "DRIFT_SAMPLE_FILE"):
        assert shards[0][key] != shards[1][key], f"the shards must not share {key}"
    for name in ("p1-cluster", "p2-shard-0", "p2-shard-1"):
        assert SERVICES[name]["depends_on"] == {"nats": {"condition": "service_healthy"}}, name


def test_resolve_substitutes_defaults() -> None:
    assert resolve("${A:-x}-${B}-${C-y}") == "x--y"

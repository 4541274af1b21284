"""Both Prometheus configs: valid for promtool, and scraping the ports P1 and P2 really use.

:func:`render_local_config` is for the live test: the local config with the targets moved to the
ports the test's P1 and P2 got, so what is tested is this file and not a copy of it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mercurystream.p1.config import P1Settings
from mercurystream.p2.config import P2Settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE_CONFIG = REPO / "prometheus.yml"
LOCAL_CONFIG = REPO / "prometheus.local.yml"
LOCAL_PROMETHEUS_PORT = 9091
SCRAPE_INTERVAL_MAX_S = 5


def promtool() -> str | None:
    return shutil.which("promtool")


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def scrape_targets(config: dict) -> dict[str, list[str]]:
    """``{job_name: [host:port, ...]}`` from a parsed config's static targets."""
    return {
        job["job_name"]: [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        for job in config["scrape_configs"]
    }


def render_local_config(p2: str, p1: str, prometheus: str | None = None, scrape_interval: str = "1s") -> str:
    """prometheus.local.yml with the p2/p1 (and self) targets replaced by ``host:port`` strings.

    Its ``rule_files`` become absolute: the rendered file is written elsewhere, and Prometheus reads a
    relative rule file from the config's own directory.
    """
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    config["rule_files"] = [str(LOCAL_CONFIG.parent / f) for f in config.get("rule_files", [])]
    config["global"]["scrape_interval"] = scrape_interval
    config["global"]["evaluation_interval"] = scrape_interval
    config["global"].pop("scrape_timeout", None)
    replace = {"p2": p2, "p1": p1, "prometheus": prometheus}
    jobs = []
    for job in config["scrape_configs"]:
        target = replace.get(job["job_name"])
        if target is None:
            continue
        job["static_configs"] = [{"targets": [target]}]
        jobs.append(job)
    config["scrape_configs"] = jobs
    return yaml.safe_dump(config, sort_keys=False)


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60}
    for unit in ("ms", "s", "m"):
        if duration.endswith(unit):
            return float(duration[: -len(unit)]) * units[unit]
    raise ValueError(duration)


def _check_config(path: Path) -> None:
    tool = promtool()
    if tool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; .ci/run installs it)")
    done = subprocess.run([tool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", [COMPOSE_CONFIG, LOCAL_CONFIG], ids=lambda p: p.name)
def test_promtool_accepts_config(path: Path) -> None:
    _check_config(path)


def test_promtool_accepts_rendered_local_config(tmp_path: Path) -> None:
    path = tmp_path / "prometheus.yml"
    path.write_text(render_local_config("127.0.0.1:45001", "127.0.0.1:45002", "127.0.0.1:45003"))
    _check_config(path)
    assert scrape_targets(_load(path)) == {
        "p2": ["127.0.0.1:45001"],
        "p1": ["127.0.0.1:45002"],
        "prometheus": ["127.0.0.1:45003"],
    }
    assert _load(path)["rule_files"] == [str(REPO / "alerts.yml")]


def test_compose_config_scrapes_the_compose_services_on_their_default_ports() -> None:
    targets = scrape_targets(_load(COMPOSE_CONFIG))
    services = _load(REPO / "docker-compose.yml")["services"]

    assert targets["p2"] == [f"p2:{P2Settings.model_fields['METRICS_PORT'].default}"]
    assert targets["p1"] == [f"p1:{P1Settings.model_fields['P1_METRICS_PORT'].default}"]
    for job, hosts in targets.items():
        for target in hosts:
            host = target.split(":")[0]
            assert host == "localhost" or host in services, f"{job}: {target} is not a compose service"


def test_compose_prometheus_mounts_this_config() -> None:
    prometheus = _load(REPO / "docker-compose.yml")["services"]["prometheus"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in prometheus["volumes"]}

    assert f"--config.file={mounts['./prometheus.yml']}" in prometheus["command"]


def test_local_config_scrapes_localhost_defaults_and_leaves_9090_to_p2() -> None:
    targets = scrape_targets(_load(LOCAL_CONFIG))

    assert targets["p2"] == [f"127.0.0.1:{P2Settings.model_fields['METRICS_PORT'].default}"]
    assert targets["p1"] == [f"127.0.0.1:{P1Settings.model_fields['P1_METRICS_PORT'].default}"]
    assert targets["prometheus"] == [f"127.0.0.1:{LOCAL_PROMETHEUS_PORT}"]
    assert LOCAL_PROMETHEUS_PORT not in (
        P2Settings.model_fields["METRICS_PORT"].default,
        P2Settings.model_fields["PORT"].default,
        P1Settings.model_fields["P1_METRICS_PORT"].default,
    )


@pytest.mark.parametrize("path", [COMPOSE_CONFIG, LOCAL_CONFIG], ids=lambda p: p.name)
def test_scrape_interval_fills_one_minute_rate_windows(path: Path) -> None:
    """The dashboard's [1m] windows need several samples, and data soon after start."""
    config = _load(path)
    interval = _seconds(config["global"]["scrape_interval"])
    assert interval <= SCRAPE_INTERVAL_MAX_S
    timeout = config["global"].get("scrape_timeout")
    assert timeout is None or _seconds(timeout) < interval
    for job in config["scrape_configs"]:
        assert "scrape_interval" not in job or _seconds(job["scrape_interval"]) <= SCRAPE_INTERVAL_MAX_S

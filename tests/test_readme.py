"""README is the user's contract: it must name every variable, command and replay flag the code has."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from mercurystream.p1.config import P1Settings
from mercurystream.p2.config import P2Settings
from mercurystream.replay.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SYSTEM = (ROOT / "SYSTEM.md").read_text()


def test_opens_with_the_two_commands():
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert re.findall(r"^make (\w+)", first_block, re.M) == ["demo", "test"]


@pytest.mark.parametrize("var", sorted(set(P1Settings.model_fields) | set(P2Settings.model_fields)))
def test_every_environment_variable_is_documented(var):
    assert f"| `{var}` |" in README


def test_every_console_script_is_documented():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name in scripts:
        assert f"`{name}" in README, name


def test_every_replay_flag_is_documented():
    flags = {opt for action in build_parser()._actions for opt in action.option_strings if opt.startswith("--")}
    flags.discard("--help")
    missing = sorted(f for f in flags if f"`{f}" not in README)
    assert not missing


def test_system_md_names_every_module_on_the_data_path():
    for module in ("framing.py", "schema.py", "models.py", "feed.py", "sink.py", "server.py", "batch.py", "bus.py",
                   "consumer.py", "consumers.py", "rule.py", "analytics/", "forensics.py", "detectors/",
                   "flight_recorder.py", "recorder.py", "timeparse.py", "jetstream.py", "nats_sink.py",
                   "nats_source.py"):  # fmt: skip
        assert module in SYSTEM, module
    rules = [p.name for d in ("analytics", "detectors") for p in (ROOT / "services/p2" / d).glob("*.py")]
    assert all(name in SYSTEM for name in rules if name != "__init__.py"), rules


def test_shared_imports_nothing_from_p1_or_p2() -> None:
    """services/shared is what both services build on; it must not reach into either."""
    for path in (ROOT / "services" / "shared").glob("*.py"):
        text = path.read_text()
        assert "mercurystream.p1" not in text and "mercurystream.p2" not in text, path.name

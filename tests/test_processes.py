from mercurystream.p1.config import P1Settings
from mercurystream.p2.config import P2Settings
from mercurystream.processes import child_env, service_variables


def test_service_variables_come_from_both_settings_classes():
    assert set(P1Settings.model_fields) | set(P2Settings.model_fields) == service_variables()


def test_child_env_drops_what_would_redirect_a_service_and_keeps_the_rest(monkeypatch):
    monkeypatch.setenv("PORT", "1")
    monkeypatch.setenv("record_file", "/elsewhere")
    monkeypatch.setenv("LOG_JSON", "true")
    monkeypatch.setenv("UNRELATED", "x")
    env = child_env({"PORT": 9}, keep=("LOG_JSON",))
    assert env["PORT"] == "9"
    assert "record_file" not in env
    assert env["LOG_JSON"] == "true" and env["UNRELATED"] == "x"

from __future__ import annotations

import hashlib
import hmac
import logging

import orjson
import pytest

from detector import health_view
from detector.alerts import build_alert
from detector.engine import PartitionEngine
from detector.events import Event
from detector.pseudonyms import Pseudonyms
from detector.settings import EngineSettings, ServiceSettings, SettingsError, build_settings

KEY = "a-test-key-of-32-characters-long"


def user_alert(user_id: str = "alice@example.com") -> dict:
    return build_alert(
        entity_type="user",
        entity_id=user_id,
        team_id="acme",
        state="at_risk",
        previous_state="cooling",
        signal="silence",
        risk=0.7,
        reasons=[],
        day=20500,
        event_time_ms=20501 * 86_400_000,
        window_days=7,
        plan="pro",
        mrr=99.0,
    )


def test_a_pseudonym_is_the_keyed_hmac_sha256_of_the_user_id():
    p = Pseudonyms(KEY.encode())
    expected = hmac.new(KEY.encode(), b"user\x1falice", hashlib.sha256).hexdigest()[:32]
    assert p.user("alice") == "u_" + expected
    assert p.user("alice") == Pseudonyms(KEY.encode()).user("alice"), "stable across restarts"
    assert p.user("alice") != Pseudonyms(b"another-key-0123456789").user("alice")
    assert p.user("alice") != p.user("bob")


def test_user_alerts_carry_no_real_user_id_and_stay_deterministic():
    p = Pseudonyms(KEY.encode())
    plain = user_alert()
    out = p.alert(plain)
    assert b"alice" not in orjson.dumps(out)
    assert out["data"]["entity_id"] == p.user("alice@example.com")
    assert out["subject"] == "user/" + out["data"]["entity_id"]
    assert out == p.alert(user_alert()), "same input, same alert (and id) for de-duplication"
    assert out["id"] not in (plain["id"], p.alert(user_alert("bob"))["id"])
    assert {k: v for k, v in out["data"].items() if k != "entity_id"} == {
        k: v for k, v in plain["data"].items() if k != "entity_id"
    }


def test_team_alerts_and_disabled_pseudonyms_pass_through():
    team = {**user_alert(), "data": {**user_alert()["data"], "entity_type": "team"}}
    assert Pseudonyms(KEY.encode()).alert(team) is team
    assert Pseudonyms(None).alerts([user_alert()]) == [user_alert()]


def test_the_health_api_answers_to_the_pseudonym_only():
    engine = PartitionEngine(EngineSettings(), clock=lambda: 0.0)
    engine.process(Event("e1", "feature.used", 1772356502123, "alice", "acme", {"feature": "x"}))
    p = Pseudonyms(KEY.encode())
    view = health_view.find_user([engine], p.user("alice"), p)
    assert view is not None and view["user_id"] == p.user("alice")
    assert "alice" not in orjson.dumps(view).decode()
    assert health_view.find_user([engine], "alice", p) is None, "a real id would link the two"
    assert health_view.find_user([engine], "alice", Pseudonyms(None))["user_id"] == "alice"


def test_the_key_comes_from_the_environment_or_a_file_and_is_never_shown(tmp_path, caplog):
    settings = build_settings(environ={"DETECTOR_SERVICE_USER_ID_KEY": KEY})
    assert KEY not in repr(settings)
    p = Pseudonyms.from_settings(settings.service)
    assert p.enabled and KEY not in repr(p)
    with caplog.at_level(logging.INFO):
        logging.getLogger("anything").info("settings: %s", settings.service.user_id_key)
    assert KEY not in caplog.text

    key_file = tmp_path / "user-id.key"
    key_file.write_text(KEY + "\n")
    from_file = build_settings(environ={"DETECTOR_SERVICE_USER_ID_KEY_FILE": str(key_file)})
    assert Pseudonyms.from_settings(from_file.service).user("alice") == p.user("alice")
    assert not Pseudonyms.from_settings(ServiceSettings()).enabled


@pytest.mark.parametrize(
    "environ",
    [
        {"DETECTOR_SERVICE_USER_ID_KEY": "short"},
        {"DETECTOR_SERVICE_USER_ID_KEY": KEY, "DETECTOR_SERVICE_USER_ID_KEY_FILE": "/etc/hosts"},
        {"DETECTOR_SERVICE_USER_ID_KEY_FILE": "/no/such/key"},
    ],
)
def test_weak_missing_or_ambiguous_keys_are_refused(environ):
    with pytest.raises(SettingsError, match="user_id_key"):
        build_settings(environ=environ)

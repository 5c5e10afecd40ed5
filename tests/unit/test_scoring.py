from __future__ import annotations

from detector.scoring import Reason, Signal, combine, explain


def _sig(name: str, strength: float) -> Signal:
    return Signal(name, strength, (Reason(f"{name}_reason", name, None, None),))


def test_specific_activity_signal_at_risk_level_is_named_before_team_decay():
    signals = [_sig("team_decay", 1.0), _sig("silence", 0.65), _sig("champion_loss", 0.6)]
    name, reasons = explain(signals)
    assert name == "champion_loss"
    assert [r.code for r in reasons] == [
        "champion_loss_reason",
        "team_decay_reason",
        "silence_reason",
    ]
    assert combine(signals) == 1.0, "the family still counts once, at its strongest"


def test_a_cooling_level_specific_signal_does_not_take_the_name():
    assert explain([_sig("team_decay", 0.9), _sig("champion_loss", 0.45)])[0] == "team_decay"


def test_other_signals_keep_the_name_when_strongest():
    signals = [_sig("struggle", 0.6), _sig("team_decay", 0.3), _sig("payment_failure", 0.8)]
    assert explain(signals)[0] == "payment_failure"
    assert explain([_sig("silence", 0.7), _sig("payment_failure", 0.6)])[0] == "silence"

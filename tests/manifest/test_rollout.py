"""`apply --wait`'s parts that need no cluster (the cluster side is tests/k8s/test_wait_and_placement.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from swiftops.manifest.rollout import parse_duration
from swiftops.protocol.errors import ConfigError

QUICKSTART = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "quickstart.yaml"


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("10m", 600), ("1h30m", 5400), ("2m5s", 125)])
def test_durations_read_like_helms(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "5 m", "1d", "-3s"])
def test_a_bad_duration_is_refused_with_an_example(text):
    with pytest.raises(ConfigError, match="write e.g. 90s, 10m or 1h30m"):
        parse_duration(text)


def test_cli_refuses_a_bad_timeout_and_wait_without_kubernetes(run_cli):
    result = run_cli("apply", "-f", str(QUICKSTART), "--target", "kubernetes", "--wait", "--timeout", "soon")
    assert result.code == 2 and "--timeout 'soon' is not a duration" in result.err
    result = run_cli("apply", "-f", str(QUICKSTART), "--wait")
    assert result.code == 2 and "--wait and --rollback-on-failure apply to --target kubernetes" in result.err

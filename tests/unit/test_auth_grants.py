"""The tokens file's grants: device ids a token may claim and the highest priority it may ask."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.service.auth import MAX_PRIORITY, AuthConfigError, BearerAuthInterceptor, read_grants


def meta(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_grants_bind_devices_and_allow_priorities(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# c\nplain\nbound devices=a,b max_priority=7\n\nboss max_priority=1000\n")
    auth = BearerAuthInterceptor(read_grants(path))
    assert auth.check(meta("plain")) is None and auth.check(meta("nope")) == "token not accepted"
    plain, bound, boss = (auth.grant(meta(t)) for t in ("plain", "bound", "boss"))
    assert plain.max_priority == 0 and plain.allows_device("anything")
    assert bound.allows_device("a") and not bound.allows_device("c") and bound.max_priority == 7
    assert boss.max_priority == MAX_PRIORITY
    assert not auth.grant(meta("nope")).allows_device("a")  # an unknown token may do nothing


@pytest.mark.parametrize(
    "line",
    ["tok devices=", "tok devices=a/b", "tok max_priority=-1", "tok max_priority=1001", "tok x=1"],
)
def test_a_malformed_grant_is_refused_naming_the_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"good\n{line}\n")
    with pytest.raises(AuthConfigError, match="line 2"):
        read_grants(path)

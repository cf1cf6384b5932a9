"""Text for operators and logs: controls escaped, personal patterns scrubbed, URLs masked."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from referral_bridge.display import escape_controls, mask_url, safe_text
from tests.profiles import examples


class TestMaskUrl:
    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            (
                "postgresql+psycopg://rb:Secret1@db.example:5432/rb?sslmode=require&password=Pw2",
                "postgresql+psycopg://rb:***@db.example:5432/rb?sslmode=require&password=***",
            ),
            (
                "amqps://bridge@mq.example/vhost?token=Tk3",
                "amqps://bridge@mq.example/vhost?token=***",
            ),
            ("amqp://guest:guest@127.0.0.1:5672//", "amqp://guest:***@127.0.0.1:5672//"),
            ("https://p.example/in?api_key=K4#frag", "https://p.example/in?api_key=***#***"),
            ("sqlite:////var/lib/rb/ledger.sqlite3", "sqlite:////var/lib/rb/ledger.sqlite3"),
            ("sqlite:///data/ledger.sqlite3", "sqlite:///data/ledger.sqlite3"),
            ("amqp://h:notaport/", "***"),
        ],
    )
    def test_secrets_are_masked_and_the_rest_kept(self, url: str, shown: str) -> None:
        assert mask_url(url) == shown


class TestSafeText:
    def test_ansi_escapes_are_neutralised_and_the_phone_behind_them_scrubbed(self) -> None:
        shown = safe_text("Jane \x1b[31m07700 900456\x1b[0m born 1984-02-29")

        assert "\x1b" not in shown
        assert "07700" not in shown
        assert "1984-02-29" not in shown

    def test_other_controls_are_shown_as_escapes(self) -> None:
        assert escape_controls("a\x07b\u202ec\rd") == "a\\x07b\\u202ec\\rd"

    def test_long_text_is_cut(self) -> None:
        assert safe_text("x" * 1000, limit=10) == "xxxxxxx..."

    @settings(max_examples=examples(300), deadline=None)
    @given(st.text(max_size=200))
    def test_nothing_unprintable_survives(self, text: str) -> None:
        shown = safe_text(text)
        categories = {unicodedata.category(char) for char in shown}
        assert not categories & {"Cc", "Cf", "Zl", "Zp", "Cs"}

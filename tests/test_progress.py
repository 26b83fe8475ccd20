"""Progress without a terminal: plain lines with the rate, the time left and the failures."""
from __future__ import annotations

import logging

from components.progress import Progress


def test_plain_lines_carry_rate_eta_and_failures(caplog):
    with caplog.at_level(logging.INFO, logger="progress"):
        with Progress("extract", total=4, unit="chunks", every_s=0, terminal=False) as p:
            p.advance()
            p.advance(failed=1, note="38331-h00#2")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("extract: 1/4 chunks") and "chunks/s" in lines[0] and "ETA" in lines[0]
    assert "1 failed" in lines[1] and "38331-h00#2" in lines[1]
    assert lines[-1].startswith("extract: 2/4 chunks") and "ETA" not in lines[-1]  # the final line


def test_lines_are_periodic_not_per_item(caplog):
    with caplog.at_level(logging.INFO, logger="progress"):
        with Progress("convert", total=100, unit="documents", every_s=3600, terminal=False) as p:
            for _ in range(100):
                p.advance()
    assert len(caplog.records) == 1  # only the closing line

"""``core.cron.is_valid_cron`` answers as Dagster's ``is_valid_cron_string`` does, without Dagster."""

from __future__ import annotations

import random

import pytest
from dagster._utils.schedules import is_valid_cron_string

from noetl_dagster.core.cron import is_valid_cron

CASES = {
    "0 2 * * *": True, "*/5 * * * *": True, "@daily": True, "@HOURLY": True, "@midnight": True,
    "0 0 * jan-mar mon-fri": True, "0 0 l * *": True, "0 0 * * l5": True, "0 0 * * 2#3": True,
    "0 0 ? * *": True, "5-1 * * * *": True, "10/5 * * * *": True, "0 0 * * 7": True, "0 0 29 2 *": True,
    "0 0 30 2,3 *": True, "R * * * *": True, "0\t2 * * *": True, " 0 2 * * * ": True, "*/100 * * * *": True,
    "0 0 30 2 *": False, "0 0 31 feb *": False, "* * * * * *": False, "1 2 3 4": False, "": False,
    "@reboot": False, "*/0 * * * *": False, "60 * * * *": False, "0 24 * * *": False, "0 0 0 * *": False,
    "0 0 * 13 *": False, "0 0 * * 8": False, "0 0 * * 5l": False, "0 0 * * 2#6": False,
    "0 0 * * 1,2#3": False, "0 ? * * *": False, "a * * * *": False, "-1 * * * *": False,
    "H * * * *": False, "1 2 3 4 5 6 7": False, "0 0 l-5 * *": False,
}


@pytest.mark.parametrize("text", sorted(CASES))
def test_cron_strings_dagster_accepts_and_refuses(text: str) -> None:
    assert is_valid_cron(text) is CASES[text]
    assert is_valid_cron_string(text) is CASES[text]  # the same answer as Dagster's


def test_random_field_combinations_agree_with_dagster() -> None:
    fields = [["*", "0", "59", "60", "*/15", "50-10", "0-59/7", "5/20", "3-3", "?"],
              ["*", "0", "23", "24", "*/2", "22-2", "9-17/2"],
              ["*", "1", "30", "31", "0", "l", "1-l", "25-5", "l-3", "?", "32"],
              ["*", "2", "12", "0", "13", "feb", "nov-feb", "*/3", "feb-feb"],
              ["*", "0", "7", "mon", "5-1", "mon-fri/2", "2#3", "l5", "mon-wed#2", "2#6", "?", "1,2#3", "8"]]
    rng = random.Random(13)
    agreed = valid = 0
    for _ in range(3000):
        text = " ".join(rng.choice(f) if rng.random() < 0.85 else ",".join(rng.sample(f, 2)) for f in fields)
        expected = is_valid_cron_string(text)
        assert is_valid_cron(text) is expected, text
        agreed += 1
        valid += expected
    assert agreed == 3000 and 300 < valid < 2700  # both answers are well represented

"""Realistic people and doses for the load tests: pure functions, no I/O.

A desk in Vietnam in 2021 saw households arrive together (one phone number
for the whole family, the failure that once let only one of them register),
Vietnamese names written family name first, 12-digit CCCD numbers whose
digits state the province, century, sex and birth year, and people coming
back for their second dose. Everything here is drawn from a `random.Random`
handed in, so a run is reproducible from its seed.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import datetime as dt
import itertools
import random

from vaxline.provinces import PROVINCES
from vaxline.valuesets import MIN_INTERVAL_DAYS

VIETNAM = dt.timezone(dt.timedelta(hours=7))

# Family names by their rough share of the population (Nguyễn alone is about 38%).
FAMILY_NAMES = {"Nguyễn": 38, "Trần": 11, "Lê": 9, "Phạm": 7, "Hoàng": 5, "Huỳnh": 4, "Phan": 4, "Vũ": 4,
                "Võ": 3, "Đặng": 2, "Bùi": 2, "Đỗ": 2, "Hồ": 2, "Ngô": 1, "Dương": 1, "Lý": 1}
MIDDLE = {"F": ["Thị", "Ngọc", "Thu", "Thanh", "Mỹ", "Kim"], "M": ["Văn", "Hữu", "Đức", "Minh", "Quốc", "Công"]}
GIVEN = {"F": ["Ánh", "Hoa", "Lan", "Hương", "Mai", "Trang", "Thảo", "Linh", "Tuyết", "Hạnh", "Nhung", "Yến"],
         "M": ["Hùng", "Dũng", "Nam", "Tuấn", "Long", "Phúc", "Khoa", "Quân", "Sơn", "Thắng", "Bảo", "Đạt"]}
# What a desk in 2021 had in the fridge, roughly by share of Vietnam's supply.
VACCINES = {"EU/1/21/1529": 35, "BBIBP-CorV": 30, "EU/1/20/1528": 18, "EU/1/20/1507": 12, "Abdala": 5}


class Weighted:
    """A weighted draw as `rng.choices(items, weights)[0]` makes it, the same item from the same stream, without
    summing the weights again at each draw: the load generator draws a few a dose, and `Random.choices` with
    weights was the costliest line of a Locust process's profile in a day."""

    def __init__(self, weights: dict):
        self.items = list(weights)
        self.cumulative = list(itertools.accumulate(weights.values()))

    def draw(self, rng: random.Random):
        return self.items[bisect.bisect(self.cumulative, rng.random() * self.cumulative[-1], 0, len(self.items) - 1)]


_FAMILY, _VACCINE = Weighted(FAMILY_NAMES), Weighted(VACCINES)
_HOUSEHOLD_SIZE = Weighted({1: 30, 2: 25, 3: 20, 4: 15, 5: 10})
_PROVINCES = sorted(PROVINCES)
BACK_ENTRY_FROM = dt.date(2021, 7, 1)  # back-entered first doses are from the 2021 campaign
BACK_ENTRY_DAYS = 150


@dataclasses.dataclass(slots=True)
class Person:
    national_id: str
    full_name: str
    birth_date: dt.date
    sex: str
    phone: str
    doses: int = 0
    last_vaccine: str = ""
    last_day: dt.date | None = None  # Vietnamese calendar day of the latest dose


class NationalIds:
    """Issues CCCD numbers whose digits agree with the person: province, century and sex, birth year, then
    six digits, here a lane (one per load-generating process) and a counter, so that no two people of a run
    ever share a number, as no two citizens do."""

    def __init__(self, lane: int) -> None:
        self.lane = lane % 100
        self.issued: dict[str, int] = collections.defaultdict(int)

    def issue(self, rng: random.Random, birth_date: dt.date, sex: str) -> str:
        century = (birth_date.year - 1900) // 100
        head = f"{rng.choice(_PROVINCES):03d}{century * 2 + (sex == 'F')}{birth_date.year % 100:02d}"
        self.issued[head] += 1
        return f"{head}{self.lane:02d}{self.issued[head] % 10_000:04d}"


def full_name(rng: random.Random, sex: str, family: str | None = None) -> str:
    family = family or _FAMILY.draw(rng)
    return f"{family} {rng.choice(MIDDLE[sex])} {rng.choice(GIVEN[sex])}"


def household(rng: random.Random, today: dt.date, ids: NationalIds) -> list[Person]:
    """One to five people who share a phone number (and, for parents' children, the father's family name)."""
    phone = f"0{rng.choice('3579')}{rng.randrange(10**8):08d}"
    family = _FAMILY.draw(rng)
    size = _HOUSEHOLD_SIZE.draw(rng)
    people = []
    for i in range(size):
        sex = rng.choice("FM")
        adult = i < 2 or rng.random() < 0.3
        born = (today - dt.timedelta(days=rng.randrange(18 * 365, 80 * 365)) if adult
                else today - dt.timedelta(days=rng.randrange(12 * 365 + 10, 18 * 365)))
        people.append(Person(ids.issue(rng, born, sex), full_name(rng, sex, family if i != 1 else None), born, sex, phone))
    return people


def vaccine_for(rng: random.Random, person: Person) -> str:
    """The product of the person's next dose: the same as before for a primary series."""
    return person.last_vaccine or _VACCINE.draw(rng)


def dose(rng: random.Random, person: Person, record_id: str, at: dt.datetime) -> dict:
    """The dose as a desk posts it, and the person's history moved on by it."""
    vaccine = vaccine_for(rng, person)
    person.doses += 1
    person.last_vaccine = vaccine
    person.last_day = at.astimezone(VIETNAM).date()
    return {"record_id": record_id, "national_id": person.national_id, "full_name": person.full_name,
            "birth_date": person.birth_date.isoformat(), "sex": person.sex, "phone": person.phone,
            "vaccine": vaccine, "lot": f"{vaccine[-4:].replace('/', '')}{rng.randrange(100, 999)}",
            "dose_number": person.doses, "administered_at": at.isoformat(timespec="seconds")}


def back_entry_time(rng: random.Random) -> dt.datetime:
    """When a back-entered (paper) dose was given: a working day's hour in the 2021 campaign."""
    day = BACK_ENTRY_FROM + dt.timedelta(days=rng.randrange(BACK_ENTRY_DAYS))
    return dt.datetime(day.year, day.month, day.day, rng.randrange(7, 17), rng.randrange(60), tzinfo=VIETNAM)


def due_for_second_dose(person: Person, today: dt.date) -> bool:
    """A first dose given on an earlier day, at least the product's interval ago."""
    if person.doses != 1 or person.last_day is None:
        return False
    return (today - person.last_day).days >= MIN_INTERVAL_DAYS.get(person.last_vaccine, 28)


def desk_batch_size(rng: random.Random, largest: int = 10) -> int:
    """How many doses a desk has entered since its last post: mostly one to three."""
    sizes = list(range(1, largest + 1))
    return rng.choices(sizes, [max(1, 32 - 4 * s) for s in sizes])[0]


def wrong_birth_date(rng: random.Random, person: Person) -> str:
    """A birth date a citizen mistypes: day and month swapped, or a year off."""
    b = person.birth_date
    if b.day <= 12 and b.day != b.month:
        return b.replace(month=b.day, day=b.month).isoformat()
    return b.replace(year=b.year - 1, day=min(b.day, 28)).isoformat()

"""Realistic doses for tests: valid national IDs, Vietnamese names, shared phones."""

from __future__ import annotations

import datetime as dt
import random

FAMILY = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng"]
MIDDLE = ["Thị", "Văn", "Hữu", "Minh", "Ngọc"]
GIVEN = ["Ánh", "Tuyết", "Hùng", "Lan", "Dũng", "Hoa", "Nam", "Mai"]


def national_id(n: int, *, province: int = 1, birth_year: int = 1990, female: bool = False) -> str:
    century_sex = (0 if birth_year < 2000 else 2) + (1 if female else 0)
    return f"{province:03d}{century_sex}{birth_year % 100:02d}{n % 1_000_000:06d}"


def dose(n: int, *, record_prefix: str = "R", phone: str | None = "0912345678", **fields) -> dict:
    rng = random.Random(n)
    female = n % 2 == 0
    year = 1950 + n % 50
    value = {
        "record_id": f"{record_prefix}-{n:07d}",
        "national_id": national_id(n, birth_year=year, female=female),
        "full_name": f"{rng.choice(FAMILY)} {rng.choice(MIDDLE)} {rng.choice(GIVEN)}",
        "birth_date": f"{year}-0{1 + n % 9}-1{n % 10}",
        "sex": "F" if female else "M",
        "phone": phone,
        "vaccine": "EU/1/21/1529",
        "lot": "ABV5300",
        "dose_number": 1,
        "administered_at": (dt.datetime(2021, 8, 14, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=7)))
                            + dt.timedelta(minutes=n % 50_000)).isoformat(),
    }
    if phone is None:
        del value["phone"]
    value.update(fields)
    return value


def batch(start: int, count: int, **fields) -> dict:
    return {"doses": [dose(n, **fields) for n in range(start, start + count)]}

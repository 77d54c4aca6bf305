"""A compressed vaccination day: --vx-doses doses within --vx-within seconds, a morning and an afternoon peak.

    locust -f loadtests/day.py --host http://127.0.0.1:8080 --vx-sites sites.json --vx-doses 5000000 --vx-within 1800

Desks post 1-10 doses at a time and clerks 1,000 (--vx-backentry-share of the doses), each drawing from
its process's share of the day, released along the day's curve (loadtests.users.day_profile).
`vaxline loadtest day` runs it with the stack, thresholds and the reconciliation.
"""

from loadtests import users
from loadtests.shapes import PacedShape  # noqa: F401 (Locust finds the shape here)
from loadtests.users import BackEntry, CitizenLookup, SiteDesk  # noqa: F401 (and the users)

users.pace("day")

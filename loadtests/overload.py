"""Past capacity: --vx-doses doses within --vx-within seconds at a flat rate meant to be twice what the
stack sustains. Ingest must answer 503 with Retry-After rather than queue without bound; the users wait
as told and post the same records again, so everything gets in.

    locust -f loadtests/overload.py --host http://127.0.0.1:8080 --vx-sites sites.json --vx-expect-503 ...
"""

from loadtests import users
from loadtests.shapes import PacedShape  # noqa: F401 (Locust finds the shape here)
from loadtests.users import BackEntry, CitizenLookup, SiteDesk  # noqa: F401 (and the users)

users.pace("flat")

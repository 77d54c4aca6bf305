"""42,000 concurrent vaccination sessions (or --vx-desks of them): ramp, hold, ramp down.

    locust -f loadtests/sessions.py --host http://127.0.0.1:8080 --vx-sites sites.json --vx-desks 42000

Desks post 1-10 doses every --vx-think seconds over held keep-alive connections; citizens look up
certificates; a few clerks back-enter 1,000-dose batches. `vaxline loadtest sessions` runs it with the
stack, several destinations, distributed Locust, thresholds and the reconciliation.
"""

from loadtests import users
from loadtests.shapes import SessionsShape  # noqa: F401 (Locust finds the shape here)
from loadtests.users import BackEntry, CitizenLookup, SiteDesk  # noqa: F401 (and the users)

users.pace(None)

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rolloutadmin.settings")

django_application = get_wsgi_application()

from api.fastpath import FastPath  # noqa: E402 - needs Django set up first
from api.snapshot import store  # noqa: E402
from rolloutadmin import dbguard  # noqa: E402
from rolloutadmin.requestlog import RequestLog  # noqa: E402 - needs Django set up first

# The evaluation endpoints take a lean path with the same handlers; everything else is plain Django. Outermost,
# one log line and a request id for every request, whichever path answers it.
application = RequestLog(FastPath(django_application))

# A server process: queries under the watchdog, snapshot checks in a background thread and kept copies for a
# cold start in an outage (rolloutadmin/dbguard.py, api/snapshot.py; the test suite turns the latter off).
dbguard.install()
store.serve()

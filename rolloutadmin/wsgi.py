import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rolloutadmin.settings")

django_application = get_wsgi_application()

from api.fastpath import FastPath  # noqa: E402 - needs Django set up first

# The evaluation endpoints take a lean path with the same handlers; everything else is plain Django.
application = FastPath(django_application)

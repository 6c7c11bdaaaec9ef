import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rolloutadmin.settings")

application = get_wsgi_application()

"""gunicorn settings for serving rolloutadmin: `gunicorn -c rolloutadmin/gunicorn.conf.py`.

gthread workers keep connections alive (services call us thousands of times a second); one worker
per core, a few threads each, since a request is CPU-bound in-memory work.
"""

import multiprocessing
import os

wsgi_app = "rolloutadmin.wsgi:application"
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count()))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", 4))
keepalive = 30
max_requests = 0
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")

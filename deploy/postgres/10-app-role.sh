#!/bin/sh
# First start of the compose `postgres` service only (docker-entrypoint-initdb.d): the least-privilege
# role the app connects as. The owner role is POSTGRES_USER; `migrate` then runs db_grants --apply.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v app_password="$APP_DB_PASSWORD" <<'SQL'
CREATE ROLE app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD :'app_password';
-- Through pgbouncer the app's per-connection `options` cannot carry statement_timeout: set it here.
ALTER ROLE app SET statement_timeout = '10s';
-- Nothing for PUBLIC: db_grants gives the app role exactly what it needs.
REVOKE ALL ON DATABASE :"DBNAME" FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SQL

#!/bin/sh
# Run by the postgres image once, on a new data volume: fraudstream's owner, which migrates
# the schema and creates the services' users but is no superuser, and its database. The
# image's superuser (postgres) is used for nothing else.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v owner_password="$OWNER_PASSWORD" <<'SQL'
CREATE ROLE fraudstream LOGIN NOSUPERUSER CREATEDB CREATEROLE PASSWORD :'owner_password';
GRANT pg_checkpoint TO fraudstream;
CREATE DATABASE fraudstream OWNER fraudstream;
SQL

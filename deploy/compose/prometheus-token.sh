#!/bin/sh
# One-shot setup of the compose stack: a bearer token for Prometheus to scrape parkguard's
# /metrics. The token goes to the Prometheus secrets volume; only its SHA-256 goes to
# parkguard's users file (as a viewer machine user without password). Runs once: a second
# start finds the token and does nothing. Rotate: delete both volumes' entries and restart.
set -eu
# Paths may be overridden (tests, other layouts).
token_file=${PARKGUARD_TOKEN_FILE:-/secrets/parkguard.token}
users=${PARKGUARD_USERS_FILE:-/var/lib/parkguard/users.toml}
if [ -s "$token_file" ]; then
  echo "prometheus token exists; nothing to do"
  exit 0
fi
token=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
hash=$(printf %s "$token" | sha256sum | cut -d' ' -f1)
umask 077
printf %s "$token" > "$token_file"
chmod 0444 "$token_file"   # Prometheus runs as nobody in its image
cat >> "$users" <<TOML

[[user]]
username = "prometheus"
display_name = "Prometheus scraper"
role = "viewer"

[[user.token]]
name = "prometheus"
sha256 = "$hash"
TOML
if getent passwd parkguard >/dev/null 2>&1; then chown parkguard:parkguard "$users"; fi
chmod 0640 "$users"
echo "prometheus token created; users file $users has its SHA-256"

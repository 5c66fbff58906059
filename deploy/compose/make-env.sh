#!/usr/bin/env bash
# Writes the credentials the Compose deployment needs, once: a gateway token
# for clients and one NATS password per service, random, in .env beside
# docker-compose.yml (or the file named as the first argument). An existing
# file is left alone, so running it again never locks anyone out.
set -euo pipefail
out=${1:-"$(dirname "$0")/.env"}
if [ -e "$out" ]; then
  echo "make-env: $out exists; keeping it" >&2
  exit 0
fi
umask 077
rand() { python3 -c 'import secrets; print(secrets.token_hex(24))'; }
{
  echo "# Parley's credentials (deploy/compose/make-env.sh); keep this file private."
  echo "GATEWAY_AUTH_TOKEN=$(rand)"
  for s in GATEWAY VAD ASR LLM TTS TOOLS; do echo "NATS_${s}_PASSWORD=$(rand)"; done
} > "$out"
echo "make-env: wrote $out; clients use: Authorization: Bearer \$GATEWAY_AUTH_TOKEN" >&2

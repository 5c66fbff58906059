#!/usr/bin/env bash
# Makes the image's base where no registry can be reached: a Debian bookworm
# minbase with its Python (3.11, what pyproject's requires-python asks for)
# made by debootstrap and imported with `docker import`. Elsewhere the
# Dockerfile's default BASE_IMAGE (a public Python image) does the same job.
#
#   deploy/image/make-base.sh [TAG]     (default parley-base:bookworm-py311)
#
# Does nothing when TAG exists already, so `make image` can call it each time.
set -euo pipefail

TAG=${1:-parley-base:bookworm-py311}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$TAG" >/dev/null 2>&1; then
  exit 0
fi
command -v debootstrap >/dev/null || {
  echo "make-base: debootstrap is missing (apt-get install debootstrap)" >&2
  exit 1
}

root=$(mktemp -d /tmp/parley-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
# python3-venv brings ensurepip; ca-certificates lets pip reach the index over
# TLS; libgomp1 is the OpenMP runtime that CTranslate2 and llama.cpp link.
debootstrap --variant=minbase \
  --include=python3,python3-venv,python3-pip,ca-certificates,libgomp1 \
  bookworm "$root" "$MIRROR"
# What a container never needs: package lists, caches, docs, man pages.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
  "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*
tar -C "$root" --numeric-owner -c . |
  docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/usr/bin/python3"]' \
    - "$TAG"
echo "make-base: imported $TAG"

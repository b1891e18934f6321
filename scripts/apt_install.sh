#!/usr/bin/env bash
# `bash scripts/apt_install.sh PACKAGE...`: Debian packages (apt-get, sudo when not root)
# installed without starting their system services (policy-rc.d 101 while apt runs):
# the servers this project needs (PostgreSQL, Redis) run as its own instances, started
# by the scripts and tests that use them; nothing should listen on 5432/6379.
set -euo pipefail
[ "$#" -gt 0 ] || exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
POLICY=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" > /dev/null && $SUDO chmod +x "$POLICY" && made_policy=1
fi
trap '[ "$made_policy" = 1 ] && $SUDO rm -f "$POLICY"' EXIT
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" > /dev/null

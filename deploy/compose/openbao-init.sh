#!/bin/sh
# One-shot set-up of the compose stack's OpenBao (dev mode, in memory): enable Transit, create
# the derived key, write the tenantkeys policy and a token holding only that policy.
# Idempotent: safe to re-run. BAO_ADDR and BAO_TOKEN (the root token) come from compose.
set -eu

until bao status >/dev/null 2>&1; do sleep 1; done

bao secrets list | grep -q '^transit/' || bao secrets enable transit
bao read transit/keys/tenantkeys >/dev/null 2>&1 ||
    bao write -f transit/keys/tenantkeys type=aes256-gcm96 derived=true auto_rotate_period=2160h
bao policy write tenantkeys /init/openbao-policy.hcl
bao token lookup "$TENANTKEYS_SERVICE_TOKEN" >/dev/null 2>&1 ||
    bao token create -id="$TENANTKEYS_SERVICE_TOKEN" -policy=tenantkeys -no-default-policy \
        -orphan -ttl=768h >/dev/null
echo "openbao ready: transit/keys/tenantkeys (derived), policy tenantkeys"

#!/bin/bash
# Deploys the release package to the Flex Consumption function app.
#
# Runs inside the template's Microsoft.Resources/deploymentScripts resource (Azure CLI container),
# signed in as the user-assigned "deployer" identity, which holds Website Contributor on the app and
# its plan. azuredeploy.json embeds this file verbatim as scriptContent; tests/deploy_checks.rs
# fails when the two differ.
#
# Environment (set by the template):
#   RESOURCE_GROUP, FUNCTION_APP_NAME, SITE_ID   the app
#   PACKAGE_URI                                  https URL of the release zip (redirects are followed)
#   REQUIRED_FUNCTIONS                           space-separated function names that must be listed
#                                                before the script succeeds (e.g. "BlobCreated" when an
#                                                Event Grid subscription is created next); may be empty
set -euo pipefail

log() { echo "[deploy-code] $*"; }

: "${RESOURCE_GROUP:?}" "${FUNCTION_APP_NAME:?}" "${SITE_ID:?}" "${PACKAGE_URI:?}"
REQUIRED_FUNCTIONS="${REQUIRED_FUNCTIONS:-}"

WORK="$(mktemp -d)"
PKG="$WORK/package.zip"

log "downloading $PACKAGE_URI"
curl -fsSL --retry 5 --retry-delay 10 -o "$PKG" "$PACKAGE_URI"
log "downloaded $(wc -c <"$PKG") bytes"

if command -v python3 >/dev/null 2>&1; then
  python3 - "$PKG" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
missing = [n for n in ("host.json", "Ingest/function.json", "BlobCreated/function.json") if n not in names]
if missing:
    sys.exit("package is not a kusto-ingest-api release zip; missing: " + ", ".join(missing))
PY
fi

# One deploy is the only deployment technology of the Flex Consumption plan; its Azure CLI command is
# `az functionapp deployment source config-zip`, which on a Flex app posts the zip to the app's
# /api/publish endpoint with the signed-in identity's Entra ID token (no basic publishing credentials).
# See deploy/README.md ("Code deployment on Flex Consumption") for the sources.
# Role assignments made by the same template can take minutes to reach the App Service front end,
# so the first attempts may be refused: retry.
attempt=1
until az functionapp deployment source config-zip --resource-group "$RESOURCE_GROUP" \
    --name "$FUNCTION_APP_NAME" --src "$PKG" --only-show-errors; do
  if [ "$attempt" -ge 10 ]; then
    log "az functionapp deployment source config-zip failed $attempt times; giving up"
    exit 1
  fi
  log "deploy attempt $attempt failed; retrying in 30 s"
  attempt=$((attempt + 1))
  sleep 30
done
log "package deployed"

HOST="$(az functionapp show --resource-group "$RESOURCE_GROUP" --name "$FUNCTION_APP_NAME" \
  --query defaultHostName --output tsv)"
deadline=$((SECONDS + 900))
for fn in $REQUIRED_FUNCTIONS; do
  until az functionapp function show --resource-group "$RESOURCE_GROUP" --name "$FUNCTION_APP_NAME" \
      --function-name "$fn" --query name --output tsv >/dev/null 2>&1; do
    if [ "$SECONDS" -gt "$deadline" ]; then
      log "function $fn is still not listed after 15 minutes"
      exit 1
    fi
    # Wake the host and ask the platform to re-read the triggers, then look again.
    curl -s -o /dev/null --max-time 30 "https://$HOST/" || true
    az rest --method post --url "$SITE_ID/syncfunctiontriggers?api-version=2024-04-01" \
      --only-show-errors >/dev/null 2>&1 || true
    sleep 20
  done
  log "function $fn is listed"
done

if [ -n "${AZ_SCRIPTS_OUTPUT_PATH:-}" ]; then
  printf '{"host": "%s"}\n' "$HOST" >"$AZ_SCRIPTS_OUTPUT_PATH"
fi
log "done"

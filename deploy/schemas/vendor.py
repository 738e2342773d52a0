#!/usr/bin/env python3
"""Vendors the parts of the ARM provider schemas that deploy/azuredeploy.json uses.

Reads a local git clone of https://github.com/Azure/azure-resource-manager-schemas at a given commit and
writes, for each provider schema file below, a subset holding the resource definitions the template uses and
every definition they reach through local "#/definitions/..." references (values copied unchanged), plus
schemas/common/definitions.json whole. tests/deploy_checks.rs validates every resource of the template
against them. Record the commit in deploy/schemas/README.md.

    python3 deploy/schemas/vendor.py <clone> <commit>
"""
import hashlib
import json
import os
import re
import subprocess
import sys

# (schema file under schemas/, resource definitions taken from it)
WANTED = [
    ("2024-04-01/Microsoft.Web.json",
     ["serverfarms", "sites", "sites_basicPublishingCredentialsPolicies", "sites_config", "sites_extensions"]),
    ("2023-05-01/Microsoft.Storage.json", ["storageAccounts", "storageAccounts_blobServices_containers"]),
    ("2022-06-15/Microsoft.EventGrid.json", ["systemTopics", "systemTopics_eventSubscriptions"]),
    ("2024-04-13/Microsoft.Kusto.json", ["clusters_databases_principalAssignments"]),
    ("2022-04-01/Microsoft.Authorization.json", ["roleAssignments"]),
    ("2023-01-31/Microsoft.ManagedIdentity.json", ["userAssignedIdentities"]),
    ("2023-08-01/Microsoft.Resources.json", ["deploymentScripts"]),
    ("2022-09-01/Microsoft.Resources.json", ["deployments"]),
    ("2023-09-01/Microsoft.OperationalInsights.json", ["workspaces"]),
    ("2020-02-02/Microsoft.Insights.Application.json", ["components"]),
]
COMMON = "common/definitions.json"
COMMON_URI = "https://schema.management.azure.com/schemas/common/definitions.json"
OUT = os.path.dirname(os.path.abspath(__file__))


def git_show(clone, commit, rel):
    return subprocess.check_output(["git", "-C", clone, "show", f"{commit}:schemas/{rel}"])


def refs(value):
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from refs(v)
    elif isinstance(value, list):
        for v in value:
            yield from refs(v)


def main(clone, commit):
    sources = {}
    for rel, names in WANTED:
        raw = git_show(clone, commit, rel)
        upstream = json.loads(raw)
        subset = {k: upstream[k] for k in ("id", "$schema", "title", "description") if k in upstream}
        subset["resourceDefinitions"] = {n: upstream["resourceDefinitions"][n] for n in names}
        definitions, todo = {}, list(subset["resourceDefinitions"].values())
        while todo:
            for r in refs(todo.pop()):
                if r.startswith("#/definitions/"):
                    name = r[len("#/definitions/"):]
                    if name not in definitions:
                        definitions[name] = upstream["definitions"][name]
                        todo.append(definitions[name])
                elif not r.startswith(COMMON_URI + "#/definitions/"):
                    sys.exit(f"{rel}: reference outside the file and common/definitions.json: {r}")
        subset["definitions"] = {k: definitions[k] for k in sorted(definitions)}
        dest = os.path.join(OUT, "providers", rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "w") as f:
            json.dump(subset, f, indent=2, ensure_ascii=False)
            f.write("\n")
        sources[rel] = (hashlib.sha256(raw).hexdigest(), len(names), len(definitions))
    raw = git_show(clone, commit, COMMON)
    dest = os.path.join(OUT, "providers", COMMON)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest, "wb") as f:
        f.write(raw)
    sources[COMMON] = (hashlib.sha256(raw).hexdigest(), "whole", "")
    for rel, (sha, n, d) in sources.items():
        print(f"| `schemas/{rel}` | {n} | {d} | `{sha}` |")


if __name__ == "__main__":
    if len(sys.argv) != 3 or not re.fullmatch(r"[0-9a-f]{40}", sys.argv[2]):
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])

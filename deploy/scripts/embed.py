#!/usr/bin/env python3
"""Copies deploy/scripts/deploy-code.sh into deploy/azuredeploy.json as the deployment script's scriptContent.

Run after editing the script: python3 deploy/scripts/embed.py (tests/deploy_checks.rs fails while they differ).
"""
import collections
import json
import pathlib

deploy = pathlib.Path(__file__).resolve().parent.parent
template_path = deploy / "azuredeploy.json"
template = json.loads(template_path.read_text(), object_pairs_hook=collections.OrderedDict)
script = (deploy / "scripts" / "deploy-code.sh").read_text()
scripts = [r for r in template["resources"] if r["type"] == "Microsoft.Resources/deploymentScripts"]
if len(scripts) != 1:
    raise SystemExit(f"expected one deploymentScripts resource, found {len(scripts)}")
scripts[0]["properties"]["scriptContent"] = script
template_path.write_text(json.dumps(template, indent=2, ensure_ascii=False) + "\n")
print(f"embedded {len(script)} characters into {template_path}")

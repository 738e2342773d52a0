//! Offline checks of the deployment artefacts in `deploy/`: the ARM template, its parameters file and
//! portal form, the embedded deployment script, the release workflow, the README section, and the
//! package that `deploy/package.sh` builds. No network: the ARM schema is vendored (see
//! `deploy/schemas/README.md`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value, json};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

const FORBIDDEN_FLEX_SETTINGS: [&str; 5] = [
    "FUNCTIONS_WORKER_RUNTIME",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "FUNCTIONS_EXTENSION_VERSION",
];

/// DESIGN §2 settings the template must expose as parameters (the platform sets the others).
const HANDLER_SETTINGS: [&str; 9] = [
    "KUSTO_INGEST_URI",
    "KUSTO_ALLOWED_INGEST_URIS",
    "KUSTO_TOKEN_SCOPE",
    "INGEST_ROUTES",
    "INGEST_DEFAULT_PROPERTIES",
    "INGEST_MAX_BLOBS",
    "INGEST_MAX_BODY_BYTES",
    "INGEST_MAX_CONCURRENCY",
    "INGEST_READ_BLOB_METADATA",
];

const BLOB_CREATED_APIS: [&str; 4] = ["PutBlob", "PutBlockList", "FlushWithClose", "CopyBlob"];

const PACKAGE_ASSET: &str = "kusto-ingest-api.zip";

fn path(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn json_file(rel: &str) -> Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid JSON: {e}"))
}

fn template() -> Value {
    json_file("deploy/azuredeploy.json")
}

fn obj<'a>(v: &'a Value, what: &str) -> &'a Map<String, Value> {
    v.as_object()
        .unwrap_or_else(|| panic!("{what} is not an object"))
}

fn resources(t: &Value) -> &Vec<Value> {
    t["resources"]
        .as_array()
        .expect("template resources is not an array")
}

fn of_type<'a>(t: &'a Value, ty: &str) -> Vec<&'a Value> {
    resources(t)
        .iter()
        .filter(|r| {
            r["type"]
                .as_str()
                .is_some_and(|x| x.eq_ignore_ascii_case(ty))
        })
        .collect()
}

fn one_of_type<'a>(t: &'a Value, ty: &str) -> &'a Value {
    let found = of_type(t, ty);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {ty} resource, found {}",
        found.len()
    );
    found[0]
}

/// Nested deployments whose inner template is evaluated in its own scope.
fn inner_templates(t: &Value) -> Vec<(&Value, &Value)> {
    of_type(t, "Microsoft.Resources/deployments")
        .into_iter()
        .map(|d| {
            assert_eq!(
                d["properties"]["expressionEvaluationOptions"]["scope"], "Inner",
                "nested deployment {} must use inner expression scope",
                d["name"]
            );
            (d, &d["properties"]["template"])
        })
        .collect()
}

/// Every resource of the template and of its nested templates.
fn all_resources(t: &Value) -> Vec<&Value> {
    let mut out: Vec<&Value> = resources(t).iter().collect();
    for (_, inner) in inner_templates(t) {
        out.extend(all_resources(inner));
    }
    out
}

/// Every string (object keys included) of `v`, except the inner templates of nested deployments.
fn strings_in_scope<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|x| strings_in_scope(x, out)),
        Value::Object(m) => {
            let nested =
                m.get("type").and_then(Value::as_str) == Some("Microsoft.Resources/deployments");
            for (k, x) in m {
                out.push(k);
                if nested && k == "properties" {
                    for (pk, px) in obj(x, "deployment properties") {
                        if pk != "template" {
                            strings_in_scope(px, out);
                        }
                    }
                } else {
                    strings_in_scope(x, out);
                }
            }
        }
        _ => {}
    }
}

/// Names used as `<func>('name')` in ARM expressions, e.g. `parameters('x')`.
fn referenced(strings: &[&str], func: &str) -> BTreeSet<String> {
    let needle = format!("{func}('");
    let mut names = BTreeSet::new();
    for s in strings.iter().filter(|s| s.starts_with('[')) {
        let mut rest = *s;
        while let Some(i) = rest.find(&needle) {
            let before = rest[..i].chars().next_back();
            rest = &rest[i + needle.len()..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue; // e.g. lambdaVariables('x')
            }
            let end = rest.find('\'').expect("unterminated name in expression");
            names.insert(rest[..end].to_owned());
        }
    }
    names
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Checks that an ARM expression has balanced quotes, parentheses and brackets.
fn expression_problem(s: &str) -> Option<String> {
    if !s.starts_with('[') || s.starts_with("[[") {
        return None;
    }
    if !s.ends_with(']') {
        return Some("does not end with ]".into());
    }
    let (mut depth, mut in_str) = (0i32, false);
    let mut chars = s[1..s.len() - 1].chars().peekable();
    while let Some(c) = chars.next() {
        match (in_str, c) {
            (true, '\'') if chars.peek() == Some(&'\'') => {
                chars.next();
            }
            (true, '\'') => in_str = false,
            (true, _) => {}
            (false, '\'') => in_str = true,
            (false, '(' | '[') => depth += 1,
            (false, ')' | ']') => {
                depth -= 1;
                if depth < 0 {
                    return Some("closes more than it opens".into());
                }
            }
            _ => {}
        }
    }
    if in_str {
        Some("unterminated string".into())
    } else if depth != 0 {
        Some("unbalanced parentheses or brackets".into())
    } else {
        None
    }
}

/// Checks parameters and variables of one template scope; returns problems.
fn scope_problems(name: &str, t: &Value) -> Vec<String> {
    let mut strings = Vec::new();
    strings_in_scope(t, &mut strings);
    let declared_params = keys(&t["parameters"]);
    let declared_vars = keys(&t["variables"]);
    let used_params = referenced(&strings, "parameters");
    let used_vars = referenced(&strings, "variables");
    let mut problems = Vec::new();
    for p in used_params.difference(&declared_params) {
        problems.push(format!("{name}: parameters('{p}') is not declared"));
    }
    for v in used_vars.difference(&declared_vars) {
        problems.push(format!("{name}: variables('{v}') is not declared"));
    }
    for p in declared_params.difference(&used_params) {
        problems.push(format!("{name}: parameter {p} is never used"));
    }
    for v in declared_vars.difference(&used_vars) {
        problems.push(format!("{name}: variable {v} is never used"));
    }
    for s in &strings {
        if let Some(p) = expression_problem(s) {
            problems.push(format!("{name}: expression {s:?} {p}"));
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// JSON validity and the ARM schema

#[test]
fn deployment_files_are_valid_json() {
    for f in [
        "deploy/azuredeploy.json",
        "deploy/azuredeploy.parameters.json",
        "deploy/createUiDefinition.json",
    ] {
        let v = json_file(f);
        assert!(v.is_object(), "{f} is not a JSON object");
    }
    let t = template();
    assert_eq!(
        t["$schema"],
        "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"
    );
    let p = json_file("deploy/azuredeploy.parameters.json");
    assert_eq!(
        p["$schema"],
        "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#"
    );
}

const REMOTE_EXPRESSION_REF: &str =
    "https://schema.management.azure.com/schemas/common/definitions.json#/definitions/expression";

fn replace_expression_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.get("$ref").and_then(Value::as_str) == Some(REMOTE_EXPRESSION_REF) {
                m.insert("$ref".into(), json!("#/definitions/expression"));
            }
            m.values_mut().for_each(replace_expression_refs);
        }
        Value::Array(a) => a.iter_mut().for_each(replace_expression_refs),
        _ => {}
    }
}

fn remote_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str)
                && !r.starts_with('#')
            {
                out.push(r.to_owned());
            }
            m.values().for_each(|x| remote_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| remote_refs(x, out)),
        _ => {}
    }
}

/// The vendored schema with its remote references neutralised (see deploy/schemas/README.md).
fn skeleton_validator() -> jsonschema::Validator {
    let mut schema = json_file("deploy/schemas/deploymentTemplate-2019-04-01.json");
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-04/schema#");
    let defs = schema["definitions"]
        .as_object_mut()
        .expect("schema definitions");
    assert!(
        defs.contains_key("resourceBase"),
        "vendored schema has no resourceBase definition"
    );
    // 1. per-provider resource schemas -> the schema's own base resource shape
    defs.insert(
        "resource".into(),
        json!({ "$ref": "#/definitions/resourceBase" }),
    );
    // 2. common/definitions.json#/definitions/expression -> local copy
    defs.insert(
        "expression".into(),
        json!({ "type": "string", "pattern": "^\\[([^\\[].*)?\\]$",
                "description": "Deployment template expression (schemas/common/definitions.json)" }),
    );
    replace_expression_refs(&mut schema);
    // 3. nothing remote may remain
    let mut left = Vec::new();
    remote_refs(&schema, &mut left);
    assert!(
        left.is_empty(),
        "remote $refs left after neutralising: {left:?}"
    );
    jsonschema::draft4::new(&schema).expect("the neutralised ARM schema does not compile")
}

fn schema_errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn template_skeleton_validates_against_arm_schema() {
    let validator = skeleton_validator();
    let t = template();
    let errors = schema_errors(&validator, &t);
    assert!(
        errors.is_empty(),
        "azuredeploy.json does not match the ARM schema:\n{}",
        errors.join("\n")
    );
    for (d, inner) in inner_templates(&t) {
        let errors = schema_errors(&validator, inner);
        assert!(
            errors.is_empty(),
            "inner template of {} does not match:\n{}",
            d["name"],
            errors.join("\n")
        );
    }

    // The validator is not vacuous: it rejects broken skeletons.
    let mut broken = t.clone();
    broken["contentVersion"] = json!("1.0");
    assert!(
        !validator.is_valid(&broken),
        "a bad contentVersion passed the schema"
    );
    let mut broken = t.clone();
    broken["resources"][0]
        .as_object_mut()
        .unwrap()
        .remove("type");
    assert!(
        !validator.is_valid(&broken),
        "a resource without type passed the schema"
    );
    let mut broken = t.clone();
    broken["resources"][0]["condition"] = json!("parameters('deployCode')");
    assert!(
        !validator.is_valid(&broken),
        "a condition that is not an expression passed the schema"
    );
    let mut broken = t.clone();
    broken["parameters"]["location"]["type"] = json!("text");
    assert!(
        !validator.is_valid(&broken),
        "an unknown parameter type passed the schema"
    );
    let mut broken = t;
    broken["outputs"] = json!({ "x": { "type": "string", "value": "v" } , "y": {} });
    assert!(
        !validator.is_valid(&broken),
        "an output without type passed the schema"
    );
}

#[test]
fn every_parameter_is_used_and_every_reference_is_declared() {
    let t = template();
    let mut problems = scope_problems("azuredeploy.json", &t);
    for (d, inner) in inner_templates(&t) {
        let name = d["name"].as_str().unwrap_or("nested deployment");
        problems.extend(scope_problems(name, inner));
        // The values the outer template passes match what the inner template declares.
        let passed = keys(&d["properties"]["parameters"]);
        let declared = keys(&inner["parameters"]);
        for p in passed.difference(&declared) {
            problems.push(format!("{name}: passes undeclared parameter {p}"));
        }
        for (p, decl) in obj(&inner["parameters"], "inner parameters") {
            if decl.get("defaultValue").is_none() && !passed.contains(p) {
                problems.push(format!(
                    "{name}: required inner parameter {p} is not passed"
                ));
            }
        }
    }
    // Every resource has an apiVersion, and conditions are expressions or booleans.
    for r in all_resources(&t) {
        if r["apiVersion"].as_str().is_none_or(|v| v.len() < 10) {
            problems.push(format!(
                "resource {} ({}) has no apiVersion",
                r["name"], r["type"]
            ));
        }
        if let Some(c) = r.get("condition")
            && !(c.is_boolean() || c.as_str().is_some_and(|s| s.starts_with('[')))
        {
            problems.push(format!(
                "resource {} has a condition that is not an expression",
                r["name"]
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn reference_checks_catch_mistakes() {
    let mut t = template();
    t["outputs"]["extra"] = json!({ "type": "string", "value": "[parameters('noSuchParameter')]" });
    let problems = scope_problems("t", &t);
    assert!(
        problems.iter().any(|p| p.contains("noSuchParameter")),
        "{problems:?}"
    );
    let mut t = template();
    t["parameters"]["unusedParameter"] = json!({ "type": "string", "defaultValue": "" });
    t["outputs"]["broken"] =
        json!({ "type": "string", "value": "[concat('a', variables('suffix')]" });
    let problems = scope_problems("t", &t);
    assert!(
        problems.iter().any(|p| p.contains("unusedParameter")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("unbalanced")),
        "{problems:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Resource properties against the provider schemas (deploy/schemas/providers, see its README)

/// The vendored provider schema files, by the URI they are published under.
const PROVIDER_SCHEMAS: [&str; 11] = [
    "2024-04-01/Microsoft.Web.json",
    "2023-05-01/Microsoft.Storage.json",
    "2022-06-15/Microsoft.EventGrid.json",
    "2024-04-13/Microsoft.Kusto.json",
    "2022-04-01/Microsoft.Authorization.json",
    "2023-01-31/Microsoft.ManagedIdentity.json",
    "2023-08-01/Microsoft.Resources.json",
    "2022-09-01/Microsoft.Resources.json",
    "2023-09-01/Microsoft.OperationalInsights.json",
    "2020-02-02/Microsoft.Insights.Application.json",
    "common/definitions.json",
];

const SCHEMA_BASE: &str = "https://schema.management.azure.com/schemas/";

/// Adds `additionalProperties: false` to every object schema that lists its `properties` and says
/// nothing about others, so that a misspelt or misplaced property fails (the provider schemas leave
/// objects open). Composite schemas (`allOf`/`anyOf`/`oneOf` beside `properties`) stay open.
fn close_objects(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let closable = m.get("properties").is_some_and(Value::is_object)
                && !m.contains_key("additionalProperties")
                && !["allOf", "anyOf", "oneOf"]
                    .iter()
                    .any(|k| m.contains_key(*k));
            if closable {
                m.insert("additionalProperties".into(), json!(false));
            }
            // A discriminated base type (`properties` beside `oneOf` branches, e.g. Event Grid's
            // AdvancedFilter with its `key`): each branch also allows the base's properties.
            let base: Vec<String> = m
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            for k in ["oneOf", "anyOf"] {
                for branch in m
                    .get_mut(k)
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if let Some(props) = branch.get_mut("properties").and_then(Value::as_object_mut)
                    {
                        for name in &base {
                            props.entry(name.clone()).or_insert(json!({}));
                        }
                    }
                }
            }
            // `properties` maps names to schemas: recurse into the schemas, not the map itself.
            for (k, x) in m.iter_mut() {
                if k == "properties" {
                    if let Some(props) = x.as_object_mut() {
                        props.values_mut().for_each(close_objects);
                    }
                } else {
                    close_objects(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// A resource definition describes the resource object itself, whose top level also carries the
/// template's own keys (`condition`, `dependsOn`, `scope`, …, checked by the skeleton test): close
/// what it nests, not its top level or the top level of its `oneOf` branches.
fn close_resource_definition(rd: &mut Value) {
    fn close_members(level: &mut Value) {
        if let Some(props) = level.get_mut("properties").and_then(Value::as_object_mut) {
            props.values_mut().for_each(close_objects);
        }
    }
    close_members(rd);
    if let Some(branches) = rd.get_mut("oneOf").and_then(Value::as_array_mut) {
        branches.iter_mut().for_each(close_members);
    }
}

/// `oneOf: [<literal schema>, <expression>]` -> `anyOf`. The provider schemas offer an ARM expression
/// as an alternative to almost every value; an expression that also fits the literal schema (a short
/// name, a parameter value under `oneOf: [{}, expression]`) would otherwise match both and fail.
fn expression_alternatives_any_of(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let is_expression_alternative =
                m.get("oneOf")
                    .and_then(Value::as_array)
                    .is_some_and(|branches| {
                        branches.iter().any(|b| {
                            b["$ref"].as_str().is_some_and(|r| {
                                r.ends_with("common/definitions.json#/definitions/expression")
                            })
                        })
                    });
            if is_expression_alternative {
                let branches = m.remove("oneOf").unwrap();
                m.insert("anyOf".into(), branches);
            }
            m.values_mut().for_each(expression_alternatives_any_of);
        }
        Value::Array(a) => a.iter_mut().for_each(expression_alternatives_any_of),
        _ => {}
    }
}

/// A resource as the provider sees it once ARM has evaluated its name: `[format('{0}/scm', …)]`
/// becomes `sample0/scm`, `[guid(…)]` a GUID, any other expression `sample0`. The name picks the `oneOf` branch
/// of resources whose properties depend on it (`sites/config` `authsettingsV2`, …). Other
/// expressions stay: the schemas accept an expression wherever a value is expected.
fn with_sample_name(r: &Value) -> Value {
    let mut r = r.clone();
    let Some(name) = r["name"].as_str() else {
        return r;
    };
    let Some(expr) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) else {
        return r;
    };
    let sample = if let Some((fmt, _)) = expr
        .strip_prefix("format('")
        .and_then(|rest| rest.split_once('\''))
    {
        let mut out = fmt.to_owned();
        for n in 0..10 {
            out = out.replace(&format!("{{{n}}}"), &format!("sample{n}"));
        }
        out
    } else if expr.starts_with("guid(") {
        "00000000-0000-0000-0000-000000000000".to_owned()
    } else {
        "sample0".to_owned()
    };
    r["name"] = json!(sample);
    r
}

struct ProviderSchemas {
    registry: jsonschema::Registry<'static>,
    /// (lower-case type, apiVersion) -> `<uri>#/resourceDefinitions/<name>`
    definitions: BTreeMap<(String, String), String>,
}

fn provider_schemas(closed: bool) -> ProviderSchemas {
    let mut docs = Vec::new();
    let mut definitions = BTreeMap::new();
    for rel in PROVIDER_SCHEMAS {
        let mut doc = json_file(&format!("deploy/schemas/providers/{rel}"));
        let uri = format!("{SCHEMA_BASE}{rel}");
        assert_eq!(
            doc["id"].as_str().map(|s| s.trim_end_matches('#')),
            Some(uri.as_str()),
            "{rel}: id"
        );
        assert_eq!(doc["$schema"], "http://json-schema.org/draft-04/schema#");
        expression_alternatives_any_of(&mut doc);
        if closed {
            if let Some(defs) = doc.get_mut("definitions").and_then(Value::as_object_mut) {
                defs.values_mut().for_each(close_objects);
            }
            if let Some(rds) = doc
                .get_mut("resourceDefinitions")
                .and_then(Value::as_object_mut)
            {
                rds.values_mut().for_each(close_resource_definition);
            }
        }
        for (name, rd) in doc["resourceDefinitions"].as_object().into_iter().flatten() {
            let ty = rd["properties"]["type"]["enum"][0]
                .as_str()
                .unwrap_or_else(|| panic!("{rel}: {name} has no type enum"));
            for version in rd["properties"]["apiVersion"]["enum"]
                .as_array()
                .unwrap_or_else(|| panic!("{rel}: {name} has no apiVersion enum"))
            {
                let key = (
                    ty.to_ascii_lowercase(),
                    version.as_str().unwrap().to_owned(),
                );
                let target = format!("{uri}#/resourceDefinitions/{name}");
                assert!(
                    definitions.insert(key.clone(), target).is_none(),
                    "{key:?} is defined twice"
                );
            }
        }
        docs.push((uri, doc));
    }
    let registry = jsonschema::Registry::new()
        .draft(jsonschema::Draft::Draft4)
        .extend(docs)
        .and_then(|b| b.prepare())
        .expect("the vendored provider schemas form a registry");
    ProviderSchemas {
        registry,
        definitions,
    }
}

impl ProviderSchemas {
    fn validator(&self, resource: &Value) -> Result<jsonschema::Validator, String> {
        let key = (
            resource["type"].as_str().unwrap_or("").to_ascii_lowercase(),
            resource["apiVersion"].as_str().unwrap_or("").to_owned(),
        );
        let target = self.definitions.get(&key).ok_or_else(|| {
            format!("no vendored provider schema for {key:?} (deploy/schemas/vendor.py)")
        })?;
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .with_registry(&self.registry)
            .build(&json!({ "$ref": target }))
            .map_err(|e| format!("{target} does not compile: {e}"))
    }

    /// Problems of every resource of `t` (nested templates included).
    fn problems(&self, t: &Value) -> Vec<String> {
        let mut problems = Vec::new();
        for r in all_resources(t) {
            let what = format!("{} {} ({})", r["type"], r["name"], r["apiVersion"]);
            match self.validator(r) {
                Err(e) => problems.push(format!("{what}: {e}")),
                Ok(v) => {
                    for e in schema_errors(&v, &with_sample_name(r)) {
                        problems.push(format!("{what}: {e}"));
                    }
                }
            }
        }
        problems
    }
}

#[test]
fn every_resource_validates_against_its_provider_schema() {
    let t = template();
    for closed in [false, true] {
        let schemas = provider_schemas(closed);
        let problems = schemas.problems(&t);
        assert!(
            problems.is_empty(),
            "resources that do not match their provider schema (closed objects: {closed}):\n{}",
            problems.join("\n")
        );
    }
}

#[test]
fn provider_schema_checks_catch_mistakes() {
    let schemas = provider_schemas(true);
    let site_index = |t: &Value| {
        resources(t)
            .iter()
            .position(|r| r["type"] == "Microsoft.Web/sites")
            .unwrap()
    };
    let expect_problem = |t: &Value, needle: &str, what: &str| {
        let problems = schemas.problems(t);
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "{what} passed the provider schemas; problems: {problems:?}"
        );
    };
    let mut t = template();
    let i = site_index(&t);
    t["resources"][i]["properties"]["functionAppConfig"]["runtime"]["nmae"] = json!("custom");
    expect_problem(&t, "nmae", "a misspelt functionAppConfig.runtime property");
    let mut t = template();
    t["resources"][i]["properties"]["siteConfig"]["minTlsVersoin"] = json!("1.2");
    expect_problem(&t, "minTlsVersoin", "a misspelt siteConfig property");
    let mut t = template();
    let fac = t["resources"][i]["properties"]["functionAppConfig"].take();
    t["resources"][i]["properties"]["siteConfig"]["functionAppConfig"] = fac;
    expect_problem(
        &t,
        "functionAppConfig",
        "functionAppConfig moved under siteConfig",
    );
    let mut t = template();
    t["resources"][i]["properties"]["siteConfig"]["ftpsState"] = json!("Sometimes");
    expect_problem(&t, "Sometimes", "an unknown ftpsState");
    let mut t = template();
    t["resources"][i]["properties"]["functionAppConfig"]["scaleAndConcurrency"]["maximumInstanceCount"] =
        json!("many");
    expect_problem(&t, "many", "a string where an integer belongs");
    let mut t = template();
    t["resources"][i]["apiVersion"] = json!("2019-08-01");
    expect_problem(
        &t,
        "no vendored provider schema",
        "an API version without a schema",
    );
    // Nested templates are checked too: the Event Grid subscription's destination.
    let mut t = template();
    let mut changed = 0;
    for d in t["resources"].as_array_mut().unwrap() {
        for r in d["properties"]["template"]["resources"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            if r["type"] == "Microsoft.EventGrid/systemTopics/eventSubscriptions" {
                r["properties"]["destination"]["endpointType"] = json!("AzureFunctions");
                changed += 1;
            }
        }
    }
    assert_eq!(changed, 1);
    expect_problem(&t, "AzureFunctions", "an unknown Event Grid endpoint type");
}

// ---------------------------------------------------------------------------------------------
// reference()/list*() of conditional resources

/// `resourceId('<type>', <segments>)` of a resource whose name is one expression or a `format()`
/// of `/`-separated parts; `None` when the name cannot be read that way.
fn resource_id_expr(r: &Value) -> Option<String> {
    let ty = r["type"].as_str()?;
    let name = r["name"].as_str()?;
    let inner = name.strip_prefix('[')?.strip_suffix(']')?;
    let segments: Vec<String> = if let Some(rest) = inner.strip_prefix("format('") {
        let (fmt, args) = rest.split_once("', ")?;
        let args = split_args(args.strip_suffix(')')?);
        fmt.split('/')
            .map(
                |part| match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    Some(n) => n.parse::<usize>().ok().and_then(|n| args.get(n).cloned()),
                    None => Some(format!("'{part}'")),
                },
            )
            .collect::<Option<_>>()?
    } else {
        vec![inner.to_owned()]
    };
    Some(format!("resourceId('{ty}', {})", segments.join(", ")))
}

/// Splits an argument list at its top-level commas.
fn split_args(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth, mut in_str) = (Vec::new(), String::new(), 0, false);
    for c in s.chars() {
        match c {
            '\'' => in_str = !in_str,
            '(' | '[' if !in_str => depth += 1,
            ')' | ']' if !in_str => depth -= 1,
            ',' if !in_str && depth == 0 => {
                out.push(cur.trim().to_owned());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_owned());
    }
    out
}

/// The calls enclosing byte `at` of expression `e`: (function name, index of the argument `at`
/// is in, text of the call's first argument), innermost last.
fn enclosing_calls(e: &str, at: usize) -> Vec<(String, usize, String)> {
    let b = e.as_bytes();
    // (name, arg index, start of the first argument)
    let mut stack: Vec<(String, usize, usize, Option<usize>)> = Vec::new();
    let mut in_str = false;
    let mut i = 0;
    while i < at {
        let c = b[i] as char;
        if in_str {
            if c == '\'' {
                in_str = false;
            }
        } else {
            match c {
                '\'' => in_str = true,
                '(' => {
                    let start = e[..i]
                        .rfind(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                        .map_or(0, |p| p + 1);
                    stack.push((e[start..i].to_owned(), 0, i + 1, None));
                }
                ',' => {
                    if let Some(top) = stack.last_mut() {
                        if top.1 == 0 {
                            top.3 = Some(i);
                        }
                        top.1 += 1;
                    }
                }
                ')' => {
                    stack.pop();
                }
                _ => {}
            }
        }
        i += 1;
    }
    stack
        .into_iter()
        .map(|(name, arg, start, end)| {
            let first = end.map_or_else(String::new, |end| e[start..end].trim().to_owned());
            (name, arg, first)
        })
        .collect()
}

/// Every `reference(`/`list…(` call of a conditional resource of `t`'s scope that is not in the
/// then-branch of an `if(<the resource's condition>, …)`.
fn unguarded_references(scope_name: &str, t: &Value) -> Vec<String> {
    let mut conditional: Vec<(String, String)> = Vec::new(); // (resourceId expr, condition)
    let mut problems = Vec::new();
    for r in resources(t) {
        let Some(cond) = r["condition"].as_str() else {
            continue;
        };
        let cond = cond
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        match resource_id_expr(r) {
            Some(id) => conditional.push((id, cond)),
            None => problems.push(format!(
                "{scope_name}: cannot read the name of conditional resource {}",
                r["name"]
            )),
        }
    }
    assert!(
        !conditional.is_empty() || resources(t).iter().all(|r| r.get("condition").is_none()),
        "{scope_name}: conditional resources not recognised"
    );
    let mut strings = Vec::new();
    strings_in_scope(t, &mut strings);
    for s in strings
        .iter()
        .filter(|s| s.starts_with('[') && !s.starts_with("[["))
    {
        for (id, cond) in &conditional {
            let mut from = 0;
            while let Some(off) = s[from..].find(id.as_str()) {
                let at = from + off;
                from = at + id.len();
                let calls = enclosing_calls(s, at);
                // reference(), and list(), listKeys(), listSecrets(), … (all evaluated at run time)
                let Some(pos) = calls
                    .iter()
                    .rposition(|(name, _, _)| name == "reference" || name.starts_with("list"))
                else {
                    continue; // resourceId() alone (dependsOn, scope, ids) is evaluated fine
                };
                let guarded = calls[..pos]
                    .iter()
                    .any(|(name, arg, first)| name == "if" && *arg == 1 && first == cond);
                if !guarded {
                    problems.push(format!(
                        "{scope_name}: {}() of {id} (condition {cond}) is not inside if({cond}, …): {s}",
                        calls[pos].0
                    ));
                }
            }
        }
    }
    problems
}

#[test]
fn references_to_conditional_resources_are_guarded_by_their_condition() {
    // ARM evaluates reference() and list*() even where the resource's condition is false
    // (https://learn.microsoft.com/azure/azure-resource-manager/templates/conditional-resource-deployment#runtime-functions),
    // so each one is wrapped in if(<the same condition>, …).
    let t = template();
    let mut problems = unguarded_references("azuredeploy.json", &t);
    for (d, inner) in inner_templates(&t) {
        problems.extend(unguarded_references(
            d["name"].as_str().unwrap_or("nested"),
            inner,
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn conditional_reference_check_catches_mistakes() {
    // The deployer identity's principal read without its condition, inside another if(), and in
    // the else-branch of the right if(): each is reported.
    let id = "resourceId('Microsoft.ManagedIdentity/userAssignedIdentities', variables('deployerIdentityName'))";
    for (expr, what) in [
        (
            format!("[reference({id}, '2023-01-31').principalId]"),
            "bare",
        ),
        (
            format!(
                "[if(parameters('assignKustoIngestor'), reference({id}, '2023-01-31').principalId, '')]"
            ),
            "other condition",
        ),
        (
            format!(
                "[if(parameters('deployCode'), '', reference({id}, '2023-01-31').principalId)]"
            ),
            "else-branch",
        ),
        (
            format!("[listKeys({id}, '2023-01-31').keys[0].value]"),
            "listKeys",
        ),
    ] {
        let mut t = template();
        t["outputs"]["probe"] = json!({ "type": "string", "value": expr });
        let problems = unguarded_references("t", &t);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("probe") || p.contains(&expr)),
            "{what}: not reported: {problems:?}"
        );
    }
    let mut t = template();
    t["outputs"]["probe"] = json!({ "type": "string",
        "value": format!("[if(parameters('deployCode'), reference({id}, '2023-01-31').principalId, '')]") });
    assert!(unguarded_references("t", &t).is_empty());
}

// ---------------------------------------------------------------------------------------------
// The portal form and the parameters file

fn ui_element_names(elements: &Value, out: &mut BTreeSet<String>) {
    for e in elements.as_array().into_iter().flatten() {
        if let Some(n) = e["name"].as_str() {
            out.insert(n.to_owned());
        }
        ui_element_names(&e["elements"], out);
    }
}

#[test]
fn ui_definition_outputs_are_template_parameters() {
    let t = template();
    let ui = json_file("deploy/createUiDefinition.json");
    assert_eq!(
        ui["$schema"],
        "https://schema.management.azure.com/schemas/0.1.2-preview/CreateUIDefinition.MultiVm.json#"
    );
    assert_eq!(ui["handler"], "Microsoft.Azure.CreateUIDef");
    assert_eq!(ui["version"], "0.1.2-preview");

    let params = obj(&t["parameters"], "template parameters");
    let outputs = obj(&ui["parameters"]["outputs"], "createUiDefinition outputs");
    let mut problems = Vec::new();
    for k in outputs.keys() {
        if !params.contains_key(k) {
            problems.push(format!("UI output {k} is not a template parameter"));
        }
    }
    for (name, decl) in params {
        if decl.get("defaultValue").is_none() && !outputs.contains_key(name) {
            problems.push(format!(
                "required template parameter {name} is not provided by the UI"
            ));
        }
    }

    // Every basics('x') / steps('s').x the outputs read exists in the form.
    let mut basics = BTreeSet::new();
    ui_element_names(&ui["parameters"]["basics"], &mut basics);
    let mut steps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in ui["parameters"]["steps"].as_array().expect("steps") {
        let mut names = BTreeSet::new();
        ui_element_names(&s["elements"], &mut names);
        steps.insert(s["name"].as_str().expect("step name").to_owned(), names);
    }
    let mut all_strings = Vec::new();
    strings_in_scope(&ui, &mut all_strings);
    for b in referenced(&all_strings, "basics") {
        if !basics.contains(&b) {
            problems.push(format!("basics('{b}') is not a basics element"));
        }
    }
    for s in &all_strings {
        let mut rest = *s;
        while let Some(i) = rest.find("steps('") {
            rest = &rest[i + 7..];
            let end = rest.find('\'').expect("unterminated step name");
            let step = &rest[..end];
            let element: String = rest[end + 2..]
                .strip_prefix('.')
                .unwrap_or("")
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            match steps.get(step) {
                None => problems.push(format!("steps('{step}') is not a step")),
                Some(names) if !element.is_empty() && !names.contains(&element) => problems.push(
                    format!("steps('{step}').{element} is not an element of that step"),
                ),
                _ => {}
            }
        }
    }
    // Allowed values offered by drop-downs are allowed by the template.
    for s in ui["parameters"]["steps"].as_array().unwrap() {
        for e in s["elements"].as_array().unwrap() {
            let (Some(name), Some(allowed)) = (
                e["name"].as_str(),
                e["constraints"]["allowedValues"].as_array(),
            ) else {
                continue;
            };
            let Some(template_allowed) =
                params.get(name).and_then(|p| p["allowedValues"].as_array())
            else {
                continue;
            };
            for a in allowed {
                if !template_allowed.contains(&a["value"]) {
                    problems.push(format!(
                        "{name}: UI offers {} which the template does not allow",
                        a["value"]
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    let p = json_file("deploy/azuredeploy.parameters.json");
    for (name, v) in obj(&p["parameters"], "parameters file") {
        assert!(
            params.contains_key(name),
            "parameters file sets unknown parameter {name}"
        );
        assert!(
            v.get("value").is_some(),
            "parameters file: {name} has no value"
        );
    }
    for (name, decl) in params {
        if decl.get("defaultValue").is_none() {
            assert!(
                p["parameters"].get(name).is_some(),
                "parameters file lacks required {name}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the template deploys

fn app_settings(site: &Value) -> BTreeMap<String, String> {
    site["properties"]["siteConfig"]["appSettings"]
        .as_array()
        .expect("site has no siteConfig.appSettings array")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().expect("setting name").to_owned(),
                s["value"].as_str().expect("setting value").to_owned(),
            )
        })
        .collect()
}

/// The parameter an expression like `[parameters('x')]` reads.
fn param_of(expr: &str) -> Option<&str> {
    expr.strip_prefix("[parameters('")?.strip_suffix("')]")
}

#[test]
fn function_app_is_a_flex_consumption_custom_handler() {
    let t = template();
    let plan = one_of_type(&t, "Microsoft.Web/serverfarms");
    assert_eq!(plan["sku"]["name"], "FC1");
    assert_eq!(plan["sku"]["tier"], "FlexConsumption");
    assert_eq!(
        plan["properties"]["reserved"], true,
        "Flex plans are Linux (reserved)"
    );

    let site = one_of_type(&t, "Microsoft.Web/sites");
    assert_eq!(site["kind"], "functionapp,linux");
    assert_eq!(site["identity"]["type"], "SystemAssigned");
    let props = &site["properties"];
    assert_eq!(props["httpsOnly"], true);
    assert_eq!(props["siteConfig"]["minTlsVersion"], "1.2");
    assert_eq!(props["siteConfig"]["ftpsState"], "Disabled");
    let fac = &props["functionAppConfig"];
    assert_eq!(
        fac["runtime"],
        json!({ "name": "custom", "version": "1.0" })
    );
    assert_eq!(fac["deployment"]["storage"]["type"], "blobContainer");
    assert_eq!(
        fac["deployment"]["storage"]["authentication"]["type"],
        "SystemAssignedIdentity"
    );
    assert!(
        fac["scaleAndConcurrency"]["instanceMemoryMB"].is_string(),
        "instance memory is a parameter"
    );

    let policies = of_type(&t, "Microsoft.Web/sites/basicPublishingCredentialsPolicies");
    assert_eq!(policies.len(), 2, "scm and ftp basic-auth policies");
    assert!(policies.iter().all(|p| p["properties"]["allow"] == false));

    let storage = one_of_type(&t, "Microsoft.Storage/storageAccounts");
    assert_eq!(storage["properties"]["allowSharedKeyAccess"], false);
    assert_eq!(storage["properties"]["minimumTlsVersion"], "TLS1_2");

    // Host storage: identity-based, with the data roles the Flex host needs, held by the app's identity.
    let roles = obj(&t["variables"]["roles"], "roles variable");
    let assigned: Vec<(&str, &str, &str)> = of_type(&t, "Microsoft.Authorization/roleAssignments")
        .iter()
        .map(|r| {
            let role = r["properties"]["roleDefinitionId"].as_str().unwrap();
            let key = role
                .split("variables('roles').")
                .nth(1)
                .unwrap_or("")
                .trim_end_matches(")]");
            (
                key,
                r["scope"].as_str().unwrap_or(""),
                r["properties"]["principalId"].as_str().unwrap(),
            )
        })
        .collect();
    for (key, id) in [
        (
            "storageBlobDataOwner",
            "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
        ),
        (
            "storageQueueDataContributor",
            "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
        ),
        (
            "storageTableDataContributor",
            "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
        ),
    ] {
        assert_eq!(roles[key], id, "role definition id of {key}");
        assert!(
            assigned.iter().any(|(k, scope, principal)| *k == key
                && scope.contains("Microsoft.Storage/storageAccounts")
                && principal.contains("resourceId('Microsoft.Web/sites'")
                && principal.ends_with(".identity.principalId]")),
            "the app's identity lacks {key} on the host storage account"
        );
    }

    let settings = app_settings(site);
    assert_eq!(
        settings["AzureWebJobsStorage__accountName"],
        "[variables('storageAccountName')]"
    );
    assert!(
        settings["APPLICATIONINSIGHTS_CONNECTION_STRING"].contains("Microsoft.Insights/components"),
        "App Insights connection string comes from the component"
    );
    let ai = one_of_type(&t, "Microsoft.Insights/components");
    assert!(
        ai["properties"]["WorkspaceResourceId"]
            .as_str()
            .unwrap()
            .contains("Microsoft.OperationalInsights/workspaces")
    );

    // Every handler setting is a parameter; only KUSTO_INGEST_URI is required; the rest default to "".
    for name in HANDLER_SETTINGS {
        let value = settings
            .get(name)
            .unwrap_or_else(|| panic!("app setting {name} is missing"));
        let param = param_of(value)
            .unwrap_or_else(|| panic!("{name} is not set from a parameter: {value}"));
        let decl = &t["parameters"][param];
        assert_eq!(decl["type"], "string", "{param} type");
        if name == "KUSTO_INGEST_URI" {
            assert!(
                decl.get("defaultValue").is_none(),
                "{param} must be required"
            );
        } else {
            assert_eq!(
                decl["defaultValue"], "",
                "{param} should default to \"\" (handler default)"
            );
        }
    }

    let outputs = obj(&t["outputs"], "outputs");
    assert!(
        outputs["functionAppUrl"]["value"]
            .as_str()
            .unwrap()
            .contains("defaultHostName")
    );
    assert!(
        outputs["ingestEndpoint"]["value"]
            .as_str()
            .unwrap()
            .contains("https://{0}/api/ingest")
    );
    assert!(
        outputs["principalId"]["value"]
            .as_str()
            .unwrap()
            .ends_with(".identity.principalId]")
    );
}

#[test]
fn no_forbidden_flex_app_settings() {
    let text = read("deploy/azuredeploy.json");
    let site = one_of_type(&template(), "Microsoft.Web/sites").clone();
    let settings = app_settings(&site);
    for name in FORBIDDEN_FLEX_SETTINGS {
        assert!(
            !settings.contains_key(name),
            "{name} must not be set on a Flex Consumption app"
        );
        assert!(
            !text.contains(name),
            "{name} appears in azuredeploy.json; Flex Consumption rejects it"
        );
    }
    assert!(
        !settings.contains_key("AzureWebJobsStorage"),
        "host storage must be identity-based, no connection string"
    );
    assert!(
        !text.contains("AccountKey="),
        "no storage keys in the template"
    );
}

#[test]
fn optional_integrations_are_switched_by_parameters() {
    let t = template();
    let bool_param = |name: &str| {
        assert_eq!(
            t["parameters"][name]["type"], "bool",
            "{name} is a bool parameter"
        );
        assert_eq!(
            t["parameters"][name]["defaultValue"], false,
            "{name} is off by default"
        );
    };
    bool_param("assignKustoIngestor");
    bool_param("grantDataStorageReader");
    bool_param("createEventGridSubscription");

    let nested = inner_templates(&t);
    let with_inner = |ty: &str| -> (&Value, &Value) {
        let found: Vec<_> = nested
            .iter()
            .filter(|(_, inner)| !of_type(inner, ty).is_empty())
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one nested deployment containing {ty}"
        );
        *found[0]
    };

    // (a) Kusto Ingestor, deployed into the cluster's resource group
    let (d, inner) = with_inner("Microsoft.Kusto/clusters/databases/principalAssignments");
    assert_eq!(d["condition"], "[parameters('assignKustoIngestor')]");
    assert!(
        d["resourceGroup"]
            .as_str()
            .unwrap()
            .contains("kustoClusterResourceGroup")
    );
    assert!(
        d["subscriptionId"]
            .as_str()
            .unwrap()
            .contains("kustoClusterSubscriptionId")
    );
    let pa = one_of_type(
        inner,
        "Microsoft.Kusto/clusters/databases/principalAssignments",
    );
    assert_eq!(pa["properties"]["role"], "Ingestor");
    assert_eq!(pa["properties"]["principalType"], "App");

    // (b) Storage Blob Data Reader on the data account
    let (d, inner) = with_inner("Microsoft.EventGrid/systemTopics/eventSubscriptions");
    assert!(
        d["condition"]
            .as_str()
            .unwrap()
            .contains("grantDataStorageReader")
    );
    assert!(d["condition"].as_str().unwrap().contains("createEventGrid"));
    let reader = of_type(inner, "Microsoft.Authorization/roleAssignments")
        .into_iter()
        .find(|r| r["condition"] == "[parameters('grantReader')]")
        .expect("conditional reader role assignment");
    let reader_role = reader["properties"]["roleDefinitionId"].as_str().unwrap();
    let var = reader_role
        .split("variables('")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    assert_eq!(
        inner["variables"][var], "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
        "Storage Blob Data Reader"
    );
    // Without rules the handler reads every blob's metadata, so the subscription needs the reader.
    assert_eq!(
        d["properties"]["parameters"]["grantReader"]["value"],
        "[or(parameters('grantDataStorageReader'), and(variables('createEventGrid'), empty(parameters('ingestRoutes'))))]"
    );

    // (c) Event Grid
    let topic = one_of_type(inner, "Microsoft.EventGrid/systemTopics");
    assert_eq!(topic["condition"], "[parameters('createEventGrid')]");
    assert_eq!(
        topic["properties"]["topicType"],
        "Microsoft.Storage.StorageAccounts"
    );
    let sub = one_of_type(inner, "Microsoft.EventGrid/systemTopics/eventSubscriptions");
    assert_eq!(sub["condition"], "[parameters('createEventGrid')]");
    let dest = &sub["properties"]["destination"];
    assert_eq!(dest["endpointType"], "AzureFunction");
    assert_eq!(dest["properties"]["maxEventsPerBatch"], 1);
    let fid = param_of(dest["properties"]["resourceId"].as_str().unwrap())
        .expect("function id is a parameter");
    let passed = d["properties"]["parameters"][fid]["value"]
        .as_str()
        .unwrap();
    assert!(
        passed.contains("resourceId('Microsoft.Web/sites'")
            && passed.contains("/functions/BlobCreated"),
        "subscription must target <site>/functions/BlobCreated, got {passed}"
    );
    let filter = &sub["properties"]["filter"];
    assert_eq!(
        filter["includedEventTypes"],
        json!(["Microsoft.Storage.BlobCreated"])
    );
    assert_eq!(
        filter["advancedFilters"],
        json!([{ "operatorType": "StringIn", "key": "data.api", "values": BLOB_CREATED_APIS }])
    );
    let retry = &sub["properties"]["retryPolicy"];
    assert!(
        retry["maxDeliveryAttempts"]
            .as_u64()
            .is_some_and(|n| (1..=30).contains(&n))
    );
    assert!(
        retry["eventTimeToLiveInMinutes"]
            .as_u64()
            .is_some_and(|n| (1..=1440).contains(&n))
    );
    assert!(
        sub["properties"]["deadLetterWithResourceIdentity"]
            .as_str()
            .unwrap()
            .contains("deadLetterContainer"),
        "optional dead-letter container"
    );
}

#[test]
fn event_grid_subscription_is_created_after_the_code_is_live() {
    let t = template();
    let script = one_of_type(&t, "Microsoft.Resources/deploymentScripts");
    assert_eq!(script["kind"], "AzureCLI");
    assert_eq!(script["identity"]["type"], "UserAssigned");
    let script_name = script["name"].as_str().unwrap();
    let (d, _) = inner_templates(&t)
        .into_iter()
        .find(|(_, inner)| {
            !of_type(inner, "Microsoft.EventGrid/systemTopics/eventSubscriptions").is_empty()
        })
        .expect("nested deployment with the Event Grid subscription");
    let depends: Vec<&str> = d["dependsOn"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let var = script_name.trim_start_matches("[").trim_end_matches("]");
    assert!(
        depends
            .iter()
            .any(|x| x.contains("Microsoft.Resources/deploymentScripts") && x.contains(var)),
        "the Event Grid subscription must depend on the code deployment script (reference §5.5); dependsOn = {depends:?}"
    );
    // Event Grid is only created when the code is deployed, and the script waits for BlobCreated then.
    assert_eq!(
        t["variables"]["createEventGrid"],
        "[and(parameters('createEventGridSubscription'), parameters('deployCode'))]"
    );
    assert_eq!(
        d["properties"]["parameters"]["createEventGrid"]["value"],
        "[variables('createEventGrid')]"
    );
    let env: BTreeMap<&str, &str> = script["properties"]["environmentVariables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    assert!(
        env["REQUIRED_FUNCTIONS"].contains("createEventGrid")
            && env["REQUIRED_FUNCTIONS"].contains("BlobCreated")
    );
    assert_eq!(env["PACKAGE_URI"], "[variables('packageUri')]");
    assert_eq!(script["condition"], "[parameters('deployCode')]");

    // The deployer identity may deploy to the app (and read its plan), nothing more.
    let deployer_roles: Vec<&Value> = of_type(&t, "Microsoft.Authorization/roleAssignments")
        .into_iter()
        .filter(|r| {
            r["properties"]["principalId"]
                .as_str()
                .unwrap()
                .contains("userAssignedIdentities")
        })
        .collect();
    assert!(!deployer_roles.is_empty());
    for r in &deployer_roles {
        assert!(
            r["properties"]["roleDefinitionId"]
                .as_str()
                .unwrap()
                .contains("websiteContributor")
        );
        let scope = r["scope"].as_str().unwrap();
        assert!(
            scope.contains("Microsoft.Web/sites/") || scope.contains("Microsoft.Web/serverfarms/"),
            "{scope}"
        );
    }
    assert_eq!(
        t["variables"]["roles"]["websiteContributor"],
        "de139f84-1756-47ae-9be6-808fbbe84772"
    );
}

#[test]
fn deployment_script_is_the_checked_in_script() {
    let t = template();
    let script = one_of_type(&t, "Microsoft.Resources/deploymentScripts");
    let embedded = script["properties"]["scriptContent"]
        .as_str()
        .expect("scriptContent");
    let file = read("deploy/scripts/deploy-code.sh");
    assert!(
        embedded == file,
        "deploy/scripts/deploy-code.sh and the template's scriptContent differ; \
         run: python3 deploy/scripts/embed.py"
    );
    assert!(
        !embedded.starts_with('['),
        "scriptContent must not look like an ARM expression"
    );
    // One deploy, the Flex Consumption plan's only deployment technology, through the Azure CLI
    // command its documentation names (deploy/README.md, "Code deployment on Flex Consumption").
    let deploys: Vec<&str> = file
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.starts_with('#') && !l.starts_with("log ") && l.contains("az functionapp deploy")
        })
        .collect();
    assert_eq!(
        deploys,
        [
            "until az functionapp deployment source config-zip --resource-group \"$RESOURCE_GROUP\" \\"
        ],
        "the script deploys once, with az functionapp deployment source config-zip"
    );
    assert!(
        file.contains("--name \"$FUNCTION_APP_NAME\" --src \"$PKG\" --only-show-errors; do"),
        "config-zip deploys the downloaded package to the app"
    );
    for banned in [
        "--build-remote",
        "/api/zipdeploy",
        "WEBSITE_RUN_FROM_PACKAGE",
        "--src-path",
    ] {
        assert!(
            !file.contains(banned),
            "{banned} has no place in a Flex deployment"
        );
    }
    for var in [
        "RESOURCE_GROUP",
        "FUNCTION_APP_NAME",
        "SITE_ID",
        "PACKAGE_URI",
        "REQUIRED_FUNCTIONS",
    ] {
        assert!(
            file.contains(&format!("${{{var}")),
            "script does not read {var}"
        );
        let set = script["properties"]["environmentVariables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == var);
        assert!(set, "template does not set {var} for the script");
    }
    let status = Command::new("bash")
        .arg("-n")
        .arg(path("deploy/scripts/deploy-code.sh"))
        .status()
        .expect("run bash -n");
    assert!(
        status.success(),
        "deploy/scripts/deploy-code.sh has a syntax error"
    );
}

// ---------------------------------------------------------------------------------------------
// Repository URL, README button, release workflow

fn repository() -> String {
    let r = read("deploy/repository.txt").trim().to_owned();
    assert!(
        r.starts_with("https://github.com/") && r.matches('/').count() == 4,
        "repository.txt: {r}"
    );
    r
}

/// `https://github.com/<owner>/<repo>` prefixes of every github.com URL in `text`.
fn github_repos(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("github.com/") {
        rest = &rest[i + "github.com/".len()..];
        let parts: Vec<&str> = rest
            .split(|c: char| !(c.is_ascii_alphanumeric() || "-_./".contains(c)))
            .next()
            .unwrap_or("")
            .splitn(3, '/')
            .collect();
        if parts.len() >= 2 {
            out.push(format!("https://github.com/{}/{}", parts[0], parts[1]));
        }
    }
    out
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn repository_url_is_in_one_place() {
    let repo = repository();
    let t = template();
    let text = read("deploy/azuredeploy.json");
    assert_eq!(
        t["variables"]["repositoryUrl"],
        json!(repo),
        "template variable repositoryUrl != deploy/repository.txt"
    );
    assert_eq!(
        text.matches("github.com").count(),
        1,
        "the template must name the repository once (variables.repositoryUrl)"
    );
    assert_eq!(
        t["variables"]["defaultPackageUri"],
        format!(
            "[format('{{0}}/releases/latest/download/{PACKAGE_ASSET}', variables('repositoryUrl'))]"
        )
    );
    assert_eq!(
        t["parameters"]["packageUri"]["defaultValue"], "",
        "packageUri defaults to the latest release"
    );
    assert_eq!(
        t["variables"]["packageUri"],
        "[if(empty(parameters('packageUri')), variables('defaultPackageUri'), parameters('packageUri'))]"
    );
    for f in [
        "deploy/createUiDefinition.json",
        "deploy/azuredeploy.parameters.json",
        "deploy/scripts/deploy-code.sh",
    ] {
        assert!(
            !read(f).contains("github.com"),
            "{f} must not name a repository (it is in the template only)"
        );
    }

    // README's "Deploy to Azure" section: the button points at this repository's raw template
    // and form, and no other repository is named there.
    let readme = read("README.md");
    let start = readme
        .find("## Deploy to Azure")
        .expect("README.md has a \"## Deploy to Azure\" section");
    let section = &readme[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let doc = section[..end].to_owned();
    let raw = format!(
        "{}/main/deploy/",
        repo.replace("https://github.com/", "https://raw.githubusercontent.com/")
    );
    let button = format!(
        "https://portal.azure.com/#create/Microsoft.Template/uri/{}/createUIDefinitionUri/{}",
        percent_encode(&format!("{raw}azuredeploy.json")),
        percent_encode(&format!("{raw}createUiDefinition.json"))
    );
    assert!(
        doc.contains(&format!(
            "[![Deploy to Azure](https://aka.ms/deploytoazurebutton)]({button})"
        )),
        "README.md has no Deploy to Azure button for {repo}; expected link {button}"
    );
    for r in github_repos(&doc).into_iter().chain(github_repos(&text)) {
        assert_eq!(r, repo, "a different repository is named");
    }
    for needle in [
        "az deployment group create",
        "x-functions-key",
        "?code=",
        "az functionapp function keys list",
        ".add database",
    ] {
        assert!(doc.contains(needle), "README.md does not show {needle}");
    }
}

#[test]
fn release_workflow_publishes_the_package_the_template_deploys() {
    let wf = read(".github/workflows/release.yml");
    for needle in [
        "tags: [\"v*\"]",
        "node-version: 20",
        "bash .ci/run",
        "deploy/package.sh",
        &format!("dist/{PACKAGE_ASSET}"),
        "gh release create",
        "contents: write",
    ] {
        assert!(wf.contains(needle), "release.yml lacks {needle:?}");
    }
    let (before_package, _) = wf.split_once("deploy/package.sh").unwrap();
    assert!(
        before_package.contains("bash .ci/run"),
        "tests run before packaging"
    );
    assert!(wf.trim_start().starts_with('#') || wf.starts_with("name:"));
    assert!(!wf.contains('\t'), "YAML must not contain tabs");
}

#[test]
fn ci_workflow_runs_the_readme_test_command() {
    // .ci/run is exactly the README's test command, and ci.yml runs .ci/run on every push and PR.
    let run = read(".ci/run");
    let commands: Vec<&str> = run
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        commands,
        [
            "set -euo pipefail",
            "cd \"$(dirname \"$0\")/..\"",
            "cargo test --workspace"
        ],
        ".ci/run must run exactly the README's test command"
    );
    let readme = read("README.md");
    assert!(
        readme.contains("```sh\ncargo test --workspace\n```"),
        "README.md shows `cargo test --workspace` as the test command"
    );
    let wf = read(".github/workflows/ci.yml");
    for needle in [
        "\non:\n  push:\n  pull_request:\n",
        "runs-on: ubuntu-latest",
        "uses: actions/setup-node@v4",
        "node-version: 20",
        "rustup toolchain install stable",
        "uses: actions/cache@v4",
        "~/.cargo/registry/",
        "target/",
        "run: bash .ci/run",
    ] {
        assert!(wf.contains(needle), "ci.yml lacks {needle:?}");
    }
    assert_eq!(
        wf.matches("run: ").count(),
        2,
        "ci.yml runs only the toolchain setup and .ci/run"
    );
    assert!(!wf.contains('\t'), "YAML must not contain tabs");
}

// ---------------------------------------------------------------------------------------------
// The package

/// Directory holding host.json and the function folders: the repository root, or KIA_APP_ROOT.
fn app_root() -> PathBuf {
    std::env::var_os("KIA_APP_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(ROOT))
}

fn app_json(rel: &str) -> Value {
    let p = app_root().join(rel);
    let text =
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()))
}

#[test]
fn template_matches_the_function_folders() {
    // The Event Grid subscription targets <site>/functions/BlobCreated: that function exists with an Event
    // Grid trigger.
    let blob_created = app_json("BlobCreated/function.json");
    let bindings = blob_created["bindings"]
        .as_array()
        .expect("BlobCreated bindings");
    assert!(
        bindings
            .iter()
            .any(|b| b["type"] == "eventGridTrigger" && b["direction"] == "in")
    );
    // The ingestEndpoint output is https://<host>/api/ingest: the Ingest function's route and the prefix.
    let ingest = app_json("Ingest/function.json");
    let trigger = ingest["bindings"]
        .as_array()
        .expect("Ingest bindings")
        .iter()
        .find(|b| b["type"] == "httpTrigger")
        .expect("Ingest has an httpTrigger");
    assert_eq!(trigger["route"], "ingest", "Ingest route");
    assert_eq!(
        trigger["authLevel"], "function",
        "README.md documents function keys"
    );
    let host = app_json("host.json");
    let prefix = host["extensions"]["http"]["routePrefix"]
        .as_str()
        .unwrap_or("api");
    assert_eq!(prefix, "api", "routePrefix");
    let t = template();
    assert!(
        t["outputs"]["ingestEndpoint"]["value"]
            .as_str()
            .unwrap()
            .contains("https://{0}/api/ingest")
    );
    // The deployment script waits for both functions to be listed.
    let script = one_of_type(&t, "Microsoft.Resources/deploymentScripts");
    let required = script["properties"]["environmentVariables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "REQUIRED_FUNCTIONS")
        .unwrap()["value"]
        .as_str()
        .unwrap();
    assert!(
        required.contains("'Ingest BlobCreated'") && required.contains("'Ingest'"),
        "{required}"
    );
}

struct ZipEntry {
    name: String,
    /// Upper byte of "version made by": 3 = Unix.
    system: u8,
    /// Unix mode from the external attributes.
    mode: u32,
    /// Offset of the external attributes field in the file, for the negative test.
    attr_offset: usize,
}

fn u16_at(b: &[u8], i: usize) -> usize {
    u16::from_le_bytes([b[i], b[i + 1]]) as usize
}

fn u32_at(b: &[u8], i: usize) -> usize {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize
}

/// Reads a zip's central directory (no zip64; the package is far below 4 GiB).
fn zip_entries(bytes: &[u8]) -> Vec<ZipEntry> {
    let eocd = (0..=bytes.len().saturating_sub(22))
        .rev()
        .find(|&i| bytes[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .expect("no end of central directory record");
    let count = u16_at(bytes, eocd + 10);
    let mut at = u32_at(bytes, eocd + 16);
    let mut entries = Vec::new();
    for _ in 0..count {
        assert_eq!(
            bytes[at..at + 4],
            [0x50, 0x4b, 0x01, 0x02],
            "bad central directory entry"
        );
        let (name_len, extra_len, comment_len) = (
            u16_at(bytes, at + 28),
            u16_at(bytes, at + 30),
            u16_at(bytes, at + 32),
        );
        entries.push(ZipEntry {
            name: String::from_utf8(bytes[at + 46..at + 46 + name_len].to_vec())
                .expect("utf-8 name"),
            system: bytes[at + 5],
            mode: (u32_at(bytes, at + 38) >> 16) as u32,
            attr_offset: at + 38,
        });
        at += 46 + name_len + extra_len + comment_len;
    }
    entries
}

fn scratch_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("kia-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn package_script_builds_the_layout_the_host_expects() {
    let app_root = app_root();
    let host = app_json("host.json");
    let exe = host["customHandler"]["description"]["defaultExecutablePath"]
        .as_str()
        .expect("host.json customHandler.description.defaultExecutablePath")
        .trim_start_matches("./")
        .to_owned();

    let dir = scratch_dir("package");
    let zip = dir.join("x.zip");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| path("target"));
    let out = Command::new("bash")
        .arg(path("deploy/package.sh"))
        .args(["--debug", "--out"])
        .arg(&zip)
        .arg("--app-root")
        .arg(&app_root)
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .expect("run deploy/package.sh");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "deploy/package.sh failed:\n{log}");
    assert!(
        log.contains("package check OK"),
        "package.sh did not check the zip:\n{log}"
    );

    let mut bytes = std::fs::read(&zip).expect("package.sh wrote no zip");
    let entries = zip_entries(&bytes);
    let names: BTreeSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    for required in [
        "host.json",
        "Ingest/function.json",
        "BlobCreated/function.json",
        exe.as_str(),
    ] {
        assert!(
            names.contains(required),
            "{required} missing at the zip root; entries: {names:?}"
        );
    }
    assert!(
        !names
            .iter()
            .any(|n| n.rsplit('/').next() == Some("local.settings.json")),
        "local.settings.json packaged"
    );
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with('/') && !n.split('/').any(|s| s == "..")),
        "unsafe paths"
    );
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with("target/") && !n.starts_with("src/")),
        "sources or build dirs packaged"
    );
    let handler = entries.iter().find(|e| e.name == exe).unwrap();
    assert_eq!(
        handler.system, 3,
        "the executable's entry carries no Unix mode"
    );
    assert_eq!(
        handler.mode & 0o170000,
        0o100000,
        "the executable is not a regular file"
    );
    assert_eq!(
        handler.mode & 0o777,
        0o755,
        "the executable's mode is {:o}, expected 755",
        handler.mode & 0o777
    );
    for e in &entries {
        if let Some(dir) = e.name.strip_suffix("/function.json") {
            assert!(
                !dir.contains('/'),
                "{} is not a top-level function folder",
                e.name
            );
        }
    }

    // The script's own check rejects a package whose executable lost its exec bit.
    let off = handler.attr_offset;
    let attrs = ((0o100644u32) << 16).to_le_bytes();
    bytes[off..off + 4].copy_from_slice(&attrs);
    let bad = dir.join("noexec.zip");
    std::fs::write(&bad, &bytes).unwrap();
    let out = Command::new("bash")
        .arg(path("deploy/package.sh"))
        .arg("--check")
        .arg(&bad)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "package.sh --check accepted a non-executable handler"
    );
    assert!(
        log.contains("expected 755"),
        "unexpected failure message:\n{log}"
    );

    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn entra_authentication_is_switched_by_its_parameter_and_spares_event_grid() {
    let t = template();
    assert_eq!(t["parameters"]["entraAuthClientId"]["defaultValue"], "");
    let auth: Vec<&Value> = of_type(&t, "Microsoft.Web/sites/config")
        .into_iter()
        .filter(|r| r["name"].as_str().unwrap_or("").contains("authsettingsV2"))
        .collect();
    assert_eq!(auth.len(), 1, "one authsettingsV2 resource");
    let auth = auth[0];
    assert_eq!(
        auth["condition"], "[not(empty(parameters('entraAuthClientId')))]",
        "off unless a client id is given"
    );
    let props = &auth["properties"];
    assert_eq!(props["platform"]["enabled"], true);
    assert_eq!(props["globalValidation"]["requireAuthentication"], true);
    assert_eq!(
        props["globalValidation"]["unauthenticatedClientAction"],
        "Return401"
    );
    let excluded = props["globalValidation"]["excludedPaths"]
        .as_array()
        .expect("excludedPaths");
    assert!(
        excluded.iter().any(|p| p == "/runtime/webhooks/eventgrid"),
        "Event Grid delivers with the system key, not an Entra token"
    );
    let aad = &props["identityProviders"]["azureActiveDirectory"];
    assert_eq!(
        aad["registration"]["clientId"],
        "[parameters('entraAuthClientId')]"
    );
    let site = one_of_type(&t, "Microsoft.Web/sites");
    let settings = app_settings(site);
    for name in [
        "INGEST_ALLOWED_TARGETS",
        "INGEST_ALLOWED_BLOB_SOURCES",
        "INGEST_CALLER_ROLES",
    ] {
        assert!(settings.contains_key(name), "{name} is an app setting");
    }
}

//! The API description, checked against the handler: `docs/openapi.json` (OpenAPI 3.0, the one
//! source) is a valid OpenAPI 3.0 document, `docs/swagger.json` (Swagger 2.0, what Logic Apps /
//! Power Automate custom connectors and API Management import) is generated from it here and a
//! valid Swagger 2.0 document, every route of the handler is described, and real answers of the
//! handler (and the requests that caused them) validate against the documented schemas.
//!
//! After editing `docs/openapi.json`: `UPDATE_SWAGGER=1 cargo test -p kusto-ingest-api --test openapi`
//! rewrites `docs/swagger.json`.

mod common;

use common::*;
use kusto_dev::BreakMode;
use reqwest::StatusCode;
use serde_json::{Map, Value, json};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Where the OpenAPI document is registered for `$ref`s (never fetched).
const SPEC_URI: &str = "https://kusto-ingest-api.invalid/openapi.json";

fn read_json(rel: &str) -> Value {
    let text = std::fs::read_to_string(format!("{ROOT}/{rel}"))
        .unwrap_or_else(|e| panic!("cannot read {rel}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel} is not JSON: {e}"))
}

fn openapi() -> Value {
    read_json("docs/openapi.json")
}

// ---------------------------------------------------------------------------------------------
// Swagger 2.0 from OpenAPI 3.0

/// `#/components/schemas/X` -> `#/definitions/X`, everywhere.
fn swagger_refs(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| {
                    let x = match (k.as_str(), x.as_str()) {
                        ("$ref", Some(r)) => {
                            json!(r.replace("#/components/schemas/", "#/definitions/"))
                        }
                        _ => swagger_refs(x),
                    };
                    (k.clone(), x)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(swagger_refs).collect()),
        other => other.clone(),
    }
}

/// A non-body parameter: the schema's keywords move onto the parameter.
fn swagger_parameter(p: &Value) -> Value {
    let mut out = Map::new();
    for k in ["name", "in", "required", "description"] {
        if let Some(v) = p.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    for (k, v) in p["schema"].as_object().expect("parameter schema") {
        out.insert(k.clone(), v.clone());
    }
    Value::Object(out)
}

fn swagger_operation(op: &Value) -> Value {
    let mut out = Map::new();
    for k in ["operationId", "summary", "description"] {
        if let Some(v) = op.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    let mut parameters: Vec<Value> = op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(swagger_parameter)
        .collect();
    if let Some(content) = op["requestBody"]["content"].as_object() {
        let types: Vec<&String> = content.keys().collect();
        if types != ["application/json"] {
            out.insert("consumes".into(), json!(types));
        }
        let schema = &content.values().next().expect("a request content type")["schema"];
        assert!(
            content.values().all(|c| c["schema"] == *schema),
            "{}: every request content type must have the same schema",
            op["operationId"]
        );
        parameters.push(json!({
            "name": "body",
            "in": "body",
            "required": op["requestBody"]["required"],
            "schema": swagger_refs(schema),
        }));
    }
    if !parameters.is_empty() {
        out.insert("parameters".into(), json!(parameters));
    }
    let mut responses = Map::new();
    for (status, r) in op["responses"].as_object().expect("responses") {
        let mut resp = Map::new();
        resp.insert("description".into(), r["description"].clone());
        if let Some(content) = r["content"].as_object() {
            assert_eq!(
                content.keys().collect::<Vec<_>>(),
                ["application/json"],
                "{}: {status} answers JSON only",
                op["operationId"]
            );
            resp.insert(
                "schema".into(),
                swagger_refs(&content["application/json"]["schema"]),
            );
        }
        if let Some(headers) = r["headers"].as_object() {
            let headers: Map<String, Value> = headers
                .iter()
                .map(|(name, h)| {
                    let mut out = h["schema"].as_object().expect("header schema").clone();
                    if let Some(d) = h.get("description") {
                        out.insert("description".into(), d.clone());
                    }
                    (name.clone(), Value::Object(out))
                })
                .collect();
            resp.insert("headers".into(), Value::Object(headers));
        }
        responses.insert(status.clone(), Value::Object(resp));
    }
    out.insert("responses".into(), Value::Object(responses));
    Value::Object(out)
}

/// The Swagger 2.0 form of `docs/openapi.json` (its one server, JSON bodies, API keys).
fn to_swagger2(spec: &Value) -> Value {
    let servers = spec["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 1, "Swagger 2.0 has one host");
    let mut url = servers[0]["url"].as_str().unwrap().to_owned();
    for (name, var) in servers[0]["variables"].as_object().into_iter().flatten() {
        url = url.replace(&format!("{{{name}}}"), var["default"].as_str().unwrap());
    }
    let (scheme, rest) = url.split_once("://").expect("server url scheme");
    let (host, base_path) = rest.split_once('/').expect("server url path");
    let paths: Map<String, Value> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(path, item)| {
            let ops = item
                .as_object()
                .unwrap()
                .iter()
                .map(|(method, op)| (method.clone(), swagger_operation(op)))
                .collect();
            (path.clone(), Value::Object(ops))
        })
        .collect();
    json!({
        "swagger": "2.0",
        "info": spec["info"],
        "host": host,
        "basePath": format!("/{base_path}"),
        "schemes": [scheme],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "securityDefinitions": spec["components"]["securitySchemes"],
        "security": spec["security"],
        "paths": paths,
        "definitions": swagger_refs(&spec["components"]["schemas"]),
    })
}

fn meta_validator(rel: &str) -> jsonschema::Validator {
    let schema = read_json(rel);
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{rel} does not compile: {e}"))
}

fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn openapi_json_is_an_openapi_3_0_document() {
    let spec = openapi();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.0."));
    let problems = errors(&meta_validator("tests/openapi/oas-3.0-schema.json"), &spec);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn swagger_json_is_generated_from_openapi_json() {
    let swagger = to_swagger2(&openapi());
    let text = serde_json::to_string_pretty(&swagger).unwrap() + "\n";
    let path = format!("{ROOT}/docs/swagger.json");
    if std::env::var_os("UPDATE_SWAGGER").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let problems = errors(
        &meta_validator("tests/openapi/swagger-2.0-schema.json"),
        &swagger,
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        written == text,
        "docs/swagger.json is not docs/openapi.json converted; run \
         UPDATE_SWAGGER=1 cargo test -p kusto-ingest-api --test openapi"
    );
    // Nothing Swagger 2.0 lacks slipped into the schemas.
    let defs = serde_json::to_string(&swagger["definitions"]).unwrap();
    for keyword in [
        "\"oneOf\"",
        "\"anyOf\"",
        "\"not\"",
        "\"nullable\"",
        "\"writeOnly\"",
    ] {
        assert!(
            !defs.contains(keyword),
            "{keyword} has no Swagger 2.0 equivalent"
        );
    }
}

#[test]
fn every_route_of_the_handler_is_described_with_function_key_security() {
    let spec = openapi();
    let mut described: Vec<(String, String)> = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            described.push((method.clone(), path.clone()));
        }
    }
    described.sort();
    // The handler's routes (src/http/routes.rs) under the host's /api prefix, BlobCreated aside
    // (the Functions host calls it for Event Grid; it is no HTTP API).
    assert_eq!(
        described,
        [
            (
                "get".to_owned(),
                "/ingest/operations/{operationId}".to_owned()
            ),
            ("post".to_owned(), "/ingest".to_owned()),
            ("post".to_owned(), "/ingest/{database}/{table}".to_owned()),
        ]
    );
    assert!(
        spec["servers"][0]["url"]
            .as_str()
            .unwrap()
            .ends_with("/api")
    );
    // Every HTTP function of the app (a folder with function.json) is described, with its method.
    for entry in std::fs::read_dir(ROOT).unwrap().flatten() {
        let file = entry.path().join("function.json");
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let function: Value = serde_json::from_str(&text).unwrap();
        for b in function["bindings"].as_array().unwrap() {
            if b["type"] != "httpTrigger" {
                continue;
            }
            assert_eq!(b["authLevel"], "function", "{}", file.display());
            let route = format!("/{}", b["route"].as_str().unwrap());
            match b["methods"].as_array() {
                Some(methods) => {
                    for m in methods {
                        let m = m.as_str().unwrap().to_ascii_lowercase();
                        assert!(
                            described.contains(&(m.clone(), route.clone())),
                            "{} ({m} {route}) is not in docs/openapi.json",
                            file.display()
                        );
                    }
                }
                // Every method reaches the handler, which answers 405 for those it does not serve.
                None => assert!(
                    described.iter().any(|(_, r)| *r == route),
                    "{} ({route}) is not in docs/openapi.json",
                    file.display()
                ),
            }
        }
    }
    assert_eq!(
        spec["security"],
        json!([{ "functionKeyHeader": [] }, { "functionKeyQuery": [] }])
    );
    let schemes = &spec["components"]["securitySchemes"];
    assert_eq!(
        schemes["functionKeyHeader"],
        json!({ "type": "apiKey", "in": "header", "name": "x-functions-key",
                "description": schemes["functionKeyHeader"]["description"] })
    );
    assert_eq!(schemes["functionKeyQuery"]["in"], "query");
    assert_eq!(schemes["functionKeyQuery"]["name"], "code");
}

// ---------------------------------------------------------------------------------------------
// Real answers against the schemas

/// JSON pointer escaping of one segment.
fn pointer_segment(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// A JSON pointer as a URI fragment (`{` and `}` of path templates percent-encoded).
fn uri_fragment(pointer: &str) -> String {
    pointer.replace('{', "%7B").replace('}', "%7D")
}

struct Spec {
    doc: Value,
    registry: jsonschema::Registry<'static>,
}

impl Spec {
    fn load() -> Self {
        let doc = openapi();
        let registry = jsonschema::Registry::new()
            .draft(jsonschema::Draft::Draft4)
            .add(SPEC_URI, doc.clone())
            .and_then(|b| b.prepare())
            .expect("docs/openapi.json as a schema registry");
        Self { doc, registry }
    }

    fn problems_at(&self, pointer: &str, instance: &Value) -> Vec<String> {
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .with_registry(&self.registry)
            .build(&json!({ "$ref": format!("{SPEC_URI}#{}", uri_fragment(pointer)) }))
            .unwrap_or_else(|e| panic!("{pointer} does not compile: {e}"));
        errors(&validator, instance)
    }

    fn validate_at(&self, pointer: &str, instance: &Value, what: &str) {
        let problems = self.problems_at(pointer, instance);
        assert!(
            problems.is_empty(),
            "{what} does not match {pointer}:\n{}\n{instance:#}",
            problems.join("\n")
        );
    }

    fn operation_pointer(method: &str, path: &str) -> String {
        format!("/paths/{}/{method}", pointer_segment(path))
    }

    /// The request body of `method path` matches the documented request schema.
    fn request(&self, method: &str, path: &str, body: &Value) {
        let pointer = format!(
            "{}/requestBody/content/application~1json/schema",
            Self::operation_pointer(method, path)
        );
        self.validate_at(&pointer, body, &format!("the {method} {path} request"));
    }

    /// The answer's status is documented for `method path`, its body matches that status's schema,
    /// and the headers documented for it are there.
    fn reply(&self, method: &str, path: &str, reply: &Reply) {
        let op = Self::operation_pointer(method, path);
        let status = reply.status.as_u16().to_string();
        let documented =
            &self.doc.pointer(&op).expect("documented operation")["responses"][status.as_str()];
        assert!(
            documented.is_object(),
            "{method} {path} answered {status}, which docs/openapi.json does not describe: {}",
            reply.text
        );
        for header in documented["headers"]
            .as_object()
            .into_iter()
            .flat_map(|h| h.keys())
        {
            assert!(
                reply.headers.contains_key(header.as_str()),
                "{method} {path} {status} lacks the documented {header} header"
            );
        }
        let pointer = format!("{op}/responses/{status}/content/application~1json/schema");
        self.validate_at(
            &pointer,
            &reply.body,
            &format!("the {status} answer of {method} {path}"),
        );
    }

    /// Also checks the body against one named schema (for answers documented as a union).
    fn is_a(&self, schema: &str, reply: &Reply) {
        self.validate_at(
            &format!("/components/schemas/{schema}"),
            &reply.body,
            &format!("the {} answer", reply.status),
        );
    }
}

#[test]
fn the_schemas_refuse_what_the_handler_must_not_answer() {
    let spec = Spec::load();
    let ok = json!({ "blobCount": 1, "queued": 1, "failed": 0, "blobs": [
        { "blobUri": "https://a.blob.core.windows.net/c/a.csv?<redacted>",
          "sourceId": "3f2b8c1e-5d4a-4f6b-9c1d-2e3f4a5b6c7d", "status": "queued" } ] });
    let accepted = "/paths/~1ingest/post/responses/202/content/application~1json/schema";
    assert!(spec.problems_at(accepted, &ok).is_empty());
    let mut undocumented = ok.clone();
    undocumented["surprise"] = json!(1);
    let mut bad_status = ok.clone();
    bad_status["blobs"][0]["status"] = json!("queueed");
    let mut no_source = ok.clone();
    no_source["blobs"][0]
        .as_object_mut()
        .unwrap()
        .remove("sourceId");
    for (what, body) in [
        ("an undocumented field", undocumented),
        ("an unknown blob status", bad_status),
        ("a blob without sourceId", no_source),
        (
            "the error shape",
            json!({ "error": { "code": "X", "message": "m" } }),
        ),
    ] {
        assert!(
            !spec.problems_at(accepted, &body).is_empty(),
            "{what} passed as a 202 answer"
        );
    }
    let request = "/paths/~1ingest/post/requestBody/content/application~1json/schema";
    assert!(
        !spec
            .problems_at(request, &json!({ "database": "d", "table": "t" }))
            .is_empty()
    );
    assert!(
        !spec
            .problems_at(
                request,
                &json!({ "database": "d", "table": "t", "blobs": [] })
            )
            .is_empty()
    );
}

const INGEST: &str = "/ingest";
const OPERATION: &str = "/ingest/operations/{operationId}";
const DATA: &str = "/ingest/{database}/{table}";

async fn post(spec: &Spec, app: &TestApp, body: &Value) -> Reply {
    spec.request("post", INGEST, body);
    let reply = app.post_ingest(body).await;
    spec.reply("post", INGEST, &reply);
    reply
}

#[tokio::test]
async fn post_ingest_answers_match_the_description() {
    let spec = Spec::load();
    let app = TestApp::builder()
        .env("INGEST_MAX_BLOBS", "5")
        .start()
        .await;

    // 202: every documented request field at once.
    let source_id = uuid::Uuid::new_v4().to_string();
    let full = json!({
        "database": "testdb", "table": "events",
        "dataManagementUri": app.dm.url(),
        "idempotent": true, "format": "csv", "ingestionMappingReference": "m", "ignoreFirstRecord": true,
        "creationTime": "2024-01-02T03:04:05Z", "tags": ["a", "b"], "ingestIfNotExists": ["x"],
        "flushImmediately": false, "reportLevel": "failuresOnly", "reportMethod": "queue",
        "retainBlobOnSuccess": true, "additionalProperties": { "zipPattern": "*.csv" },
        "blobs": [{ "blobUri": app.blob_uri("spec/a.csv"), "rawDataSize": 10, "sourceId": source_id,
                    "additionalProperties": { "tags": "[\"per-blob\"]" } }]
    });
    let reply = post(&spec, &app, &full).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);

    // 202: the README's local Logic App body (the local stack's DM, which it allowlists).
    let logic_app = json!({
        "database": "localdb", "table": "Employees", "dataManagementUri": app.dm.url(),
        "blobs": [{ "blobUri": app.blob_uri("samples/employees.csv"),
                    "additionalProperties": { "format": "csv", "ignoreFirstRecord": "true" } }]
    });
    let reply = post(&spec, &app, &logic_app).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);

    // 207: one blob's message is over 64 KiB.
    let mixed = request(vec![
        json!({ "blobUri": app.blob_uri("spec/huge.csv"),
                "additionalProperties": { "bigProperty": "x".repeat(60 * 1024) } }),
        json!({ "blobUri": app.blob_uri("spec/fine.csv") }),
    ]);
    let reply = post(&spec, &app, &mixed).await;
    assert_eq!(reply.status.as_u16(), 207, "{}", reply.text);
    assert_eq!(reply.body["blobs"][0]["error"]["code"], "MessageTooLarge");

    // 400: not JSON (the request is not one the schema describes, so only the answer is checked).
    let reply = app
        .post_raw(b"{not json".to_vec(), "application/json")
        .await;
    spec.reply("post", INGEST, &reply);
    spec.is_a("ErrorResponse", &reply);
    assert_eq!(reply.error_code(), "InvalidJson");

    // 400: several invalid fields, with details.
    let reply = app
        .post_ingest(&json!({ "table": "", "blobs": [{ "rawDataSize": -1 }] }))
        .await;
    spec.reply("post", INGEST, &reply);
    spec.is_a("ErrorResponse", &reply);
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    assert!(reply.body["error"]["details"].as_array().unwrap().len() > 1);

    // 403: a DM outside the allowlist (the README's Azure Logic App body, sent to a local app).
    let azure = json!({
        "database": "myingest", "table": "employees",
        "dataManagementUri": "https://ingest-mycluster.westeurope.kusto.windows.net",
        "blobs": [{ "blobUri": "https://acct.blob.core.windows.net/c/a.csv?sv=2024-01-01&sig=x",
                    "additionalProperties": { "format": "csv", "mappingReference": "m", "ignoreFirstRecord": "true" } }]
    });
    let reply = post(&spec, &app, &azure).await;
    reply.assert_error(StatusCode::FORBIDDEN, "DataManagementUriNotAllowed");

    // 413: more than INGEST_MAX_BLOBS.
    let blobs = (0..6)
        .map(|i| json!({ "blobUri": app.blob_uri(&format!("spec/{i}.csv")) }))
        .collect();
    let reply = post(&spec, &app, &request(blobs)).await;
    reply.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "TooManyBlobs");
    app.assert_no_secrets();
}

#[tokio::test]
async fn unavailable_queues_and_a_refusing_dm_match_the_description() {
    let spec = Spec::load();
    // 503 + Retry-After: every queue refuses (transient), nothing queued.
    let app = TestApp::builder()
        .faults(|f| {
            f.break_account("ingestacct1", BreakMode::ServerBusy);
            f.break_account("ingestacct2", BreakMode::ServerBusy);
        })
        .start()
        .await;
    let body = request(vec![json!({ "blobUri": app.blob_uri("spec/busy.csv") })]);
    let reply = post(&spec, &app, &body).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
    spec.is_a("IngestResultsOrError", &reply);

    // 502: the DM's answer is refused (oversized), nothing can be queued.
    let app = TestApp::builder()
        .faults(|f| f.set_oversized_answers(Some(8 * 1024 * 1024)))
        .start()
        .await;
    let body = request(vec![json!({ "blobUri": app.blob_uri("spec/dm.csv") })]);
    let reply = post(&spec, &app, &body).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text);
}

#[tokio::test]
async fn tracked_requests_and_operation_reads_match_the_description() {
    let spec = Spec::load();
    let app = TestApp::start().await;
    let mut body = request(vec![
        json!({ "blobUri": app.blob_uri("spec/t1.csv") }),
        json!({ "blobUri": app.blob_uri("spec/t2.csv") }),
    ]);
    body["tracking"] = json!(true);
    let reply = post(&spec, &app, &body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let operation = reply.body["operationId"].as_str().unwrap().to_owned();
    let status_uri = reply.body["statusUri"].as_str().unwrap().to_owned();

    // 200, two pages: the first has continuation and nextLink, the last neither.
    let first = app.get(&format!("{status_uri}?$top=1")).await;
    spec.reply("get", OPERATION, &first);
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.body["status"]["InProgress"], 2, "{}", first.text);
    let next = first.body["nextLink"]
        .as_str()
        .expect("nextLink")
        .to_owned();
    assert!(first.body["continuation"].is_string());
    let last = app.get(&next).await;
    spec.reply("get", OPERATION, &last);
    assert_eq!(last.status, StatusCode::OK, "{}", last.text);
    assert!(last.body.get("nextLink").is_none(), "{}", last.text);

    // 400: not an id this service issued; $top out of range.
    let reply = app.get("/api/ingest/operations/not-an-id").await;
    spec.reply("get", OPERATION, &reply);
    assert_eq!(reply.error_code(), "InvalidOperationId");
    let reply = app
        .get(&format!("/api/ingest/operations/{operation}?$top=0"))
        .await;
    spec.reply("get", OPERATION, &reply);
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);

    // 404: well formed, but for a DM outside the allowlist.
    let reply = app
        .get(&format!(
            "/api/ingest/operations/{}",
            operation_id("https://ingest-elsewhere.kusto.windows.net")
        ))
        .await;
    spec.reply("get", OPERATION, &reply);
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
    app.assert_no_secrets();

    // 503 + Retry-After: the DM cannot be reached for the status table.
    let down = TestApp::builder()
        .env("INGEST_REQUEST_DEADLINE_SECONDS", "5")
        .faults(|f| f.set_down(true))
        .start()
        .await;
    let reply = down
        .get(&format!(
            "/api/ingest/operations/{}",
            operation_id(down.dm.url())
        ))
        .await;
    spec.reply("get", OPERATION, &reply);
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
}

/// A well-formed v1 operation id naming `dm` (and a status table the DM never handed out).
fn operation_id(dm: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        json!({"v": 1, "dm": dm, "t": "http://127.0.0.1:1/acct/status",
               "p": "11111111-2222-4333-8444-555555555555"})
        .to_string(),
    )
}

#[tokio::test]
async fn data_uploads_match_the_description() {
    let spec = Spec::load();
    let app = TestApp::start().await;
    let post_data = |path_and_query: &str, content_type: &str, body: &'static [u8]| {
        reqwest::Client::new()
            .post(format!("{}{path_and_query}", app.address))
            .header("x-functions-key", FUNCTION_KEY)
            .header("Content-Type", content_type)
            .body(body)
            .send()
    };
    for (path_and_query, content_type, data, expected) in [
        (
            "/api/ingest/testdb/events?tracking=true",
            "text/csv",
            &b"a,b\n1,2\n"[..],
            202,
        ),
        (
            "/api/ingest/testdb/events",
            "application/x-ndjson",
            b"",
            400,
        ),
        (
            "/api/ingest/testdb/events?format=xlsx",
            "application/octet-stream",
            b"x",
            400,
        ),
    ] {
        let resp = post_data(path_and_query, content_type, data)
            .await
            .expect("POST reached the handler");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let reply = Reply {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        };
        assert_eq!(reply.status.as_u16(), expected, "{}", reply.text);
        spec.reply("post", DATA, &reply);
    }
}

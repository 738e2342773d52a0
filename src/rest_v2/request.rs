//! The body of `POST {dm}/v1/rest/ingestion/queued/{database}/{table}` (docs/wire-facts.md,
//! "Queued ingestion REST (v2)"): the blobs, and one `properties` object for all of them, so only
//! blobs with the same target and the same ingestion properties share a request.

use crate::ingest::BlobJob;
use crate::properties::IngestionSpec;
use serde_json::{Map, Value, json};

/// The v2 name of a v1 `AdditionalProperties` key, where they differ in spelling (the v1 keys are
/// kept as the caller gave them; the v2 API names them in camelCase).
fn v2_key(key: &str) -> String {
    match key.to_ascii_lowercase().as_str() {
        "format" => "format".to_owned(),
        "tags" => "tags".to_owned(),
        "ingestifnotexists" => "ingestIfNotExists".to_owned(),
        "ignorefirstrecord" => "ignoreFirstRecord".to_owned(),
        "validationpolicy" => "validationPolicy".to_owned(),
        "creationtime" => "creationTime".to_owned(),
        "zippattern" => "zipPattern".to_owned(),
        "mappingreference"
        | "csvmappingreference"
        | "jsonmappingreference"
        | "avromappingreference"
        | "ingestionmappingreference" => "ingestionMappingReference".to_owned(),
        "csvmapping" | "jsonmapping" | "avromapping" | "ingestionmapping" => {
            "ingestionMapping".to_owned()
        }
        _ => key.to_owned(),
    }
}

/// The `properties` object for blobs of `spec`; `track` sets `enableTracking`.
pub(super) fn properties(spec: &IngestionSpec, track: bool) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in &spec.additional {
        let key = v2_key(key);
        let value = match (key.as_str(), value) {
            // v1 carries lists as JSON-array strings; v2 takes arrays.
            ("tags" | "ingestIfNotExists", Value::String(s)) => {
                match serde_json::from_str::<Value>(s) {
                    Ok(array @ Value::Array(_)) => array,
                    _ => Value::Array(vec![Value::String(s.clone())]),
                }
            }
            _ => value.clone(),
        };
        out.insert(key, value);
    }
    if track {
        out.insert("enableTracking".into(), true.into());
    }
    if spec.flush_immediately {
        out.insert("skipBatching".into(), true.into());
    }
    if !spec.retain_blob_on_success {
        out.insert("deleteAfterDownload".into(), true.into());
    }
    if spec.ignore_size_limit {
        out.insert("ignoreSizeLimit".into(), true.into());
    }
    out
}

/// The whole body for `jobs` (one target, one spec).
pub(super) fn body(jobs: &[&BlobJob], properties: &Map<String, Value>, timestamp: &str) -> String {
    let blobs: Vec<Value> = jobs
        .iter()
        .map(|job| {
            let mut blob = json!({
                "url": job.blob.expose_with_credentials(),
                "sourceId": job.source_id.to_string(),
            });
            if let Some(size) = job.raw_data_size {
                blob["rawSize"] = size.into();
            }
            blob
        })
        .collect();
    json!({"timestamp": timestamp, "blobs": blobs, "properties": properties}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::properties::PropertyBag;

    fn spec(props: Value) -> IngestionSpec {
        let Value::Object(map) = props else {
            unreachable!()
        };
        PropertyBag::from_map(map).parse().unwrap().spec()
    }

    #[test]
    fn v1_properties_become_the_documented_v2_ones() {
        let s = spec(json!({
            "format": "csv",
            "tags": ["ingest-by:rest"],
            "csvMappingReference": "csv_mapping",
            "creationTime": "2025-10-01T11:00:00Z",
            "retainBlobOnSuccess": false,
            "flushImmediately": true,
        }));
        let p = properties(&s, true);
        assert_eq!(p["format"], "csv");
        assert_eq!(p["tags"], json!(["ingest-by:rest"]));
        assert_eq!(p["ingestionMappingReference"], "csv_mapping");
        assert_eq!(p["creationTime"], "2025-10-01T11:00:00Z");
        assert_eq!(p["enableTracking"], true);
        assert_eq!(p["skipBatching"], true);
        assert_eq!(p["deleteAfterDownload"], true);
        let untracked = properties(&spec(json!({"format": "json"})), false);
        assert!(untracked.get("enableTracking").is_none());
        assert!(untracked.get("deleteAfterDownload").is_none());
    }
}

//! Data format inferred from a blob's name, used when neither the routing rule nor the blob's
//! metadata names one.

/// Compression wrappers Kusto opens itself; the format is the extension before them.
const WRAPPERS: &[&str] = &[".gz", ".gzip", ".zip"];

/// Extensions with an unambiguous Kusto format. `.json`, `.jsonl` and `.ndjson` mean JSON lines
/// (`json`); documents that span lines or hold an array need `multijson` from a rule or metadata.
const EXTENSIONS: &[(&str, &str)] = &[
    ("csv", "csv"),
    ("tsv", "tsv"),
    ("tsve", "tsve"),
    ("psv", "psv"),
    ("scsv", "scsv"),
    ("sohsv", "sohsv"),
    ("txt", "txt"),
    ("raw", "raw"),
    ("json", "json"),
    ("jsonl", "json"),
    ("ndjson", "json"),
    ("multijson", "multijson"),
    ("avro", "avro"),
    ("parquet", "parquet"),
    ("orc", "orc"),
    ("sstream", "sstream"),
    ("w3clogfile", "w3clogfile"),
];

/// The format a file name implies: `a.csv` → csv, `a.csv.gz` → csv, `a.PARQUET` → parquet;
/// `None` for unknown or missing extensions (`a.bin`, `a.gz`, `README`).
pub(crate) fn infer_format(file_name: &str) -> Option<&'static str> {
    let mut name = file_name.to_ascii_lowercase();
    if let Some(wrapper) = WRAPPERS.iter().find(|w| name.ends_with(*w)) {
        name.truncate(name.len() - wrapper.len());
    }
    let (stem, ext) = name.rsplit_once('.')?;
    if stem.is_empty() {
        return None;
    }
    EXTENSIONS
        .iter()
        .find(|(e, _)| *e == ext)
        .map(|(_, format)| *format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::properties::DATA_FORMATS;

    #[test]
    fn extensions_and_wrappers() {
        for (name, expected) in [
            ("a.csv", Some("csv")),
            ("a.CSV", Some("csv")),
            ("a.csv.gz", Some("csv")),
            ("a.tsv.zip", Some("tsv")),
            ("part-0001.snappy.parquet", Some("parquet")),
            ("a.avro", Some("avro")),
            ("a.orc", Some("orc")),
            ("a.psv", Some("psv")),
            ("a.txt", Some("txt")),
            ("a.json", Some("json")),
            ("a.jsonl.gz", Some("json")),
            ("a.ndjson", Some("json")),
            ("a.multijson", Some("multijson")),
            ("u_ex240101.w3clogfile", Some("w3clogfile")),
            ("a.json.gzip", Some("json")),
            ("a.bin", None),
            ("a.gz", None),
            ("a.csv.bz2", None),
            (".csv", None),
            ("README", None),
            ("", None),
        ] {
            assert_eq!(infer_format(name), expected, "{name}");
        }
    }

    #[test]
    fn every_inferred_format_is_a_kusto_format() {
        for (_, format) in EXTENSIONS {
            assert!(DATA_FORMATS.contains(format), "{format}");
        }
    }
}

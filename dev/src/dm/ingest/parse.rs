//! Blob content → rows: gzip is unpacked (by `.gz` name or magic bytes), then the text is
//! read in the message's `format`. Rows of separated formats and `txt`/`raw` are JSON
//! arrays of strings; rows of JSON formats are the JSON values themselves.
//!
//! Errors follow DOC `error-codes.md` and `ingest-invalid-data.md`: corrupted data
//! `BadRequest_InvalidBlob`, no data `BadRequest_NoRecordsOrWrongFormat`, malformed
//! `multijson` `BadRequest_InvalidBlob`, malformed lines of `json` skipped.

use std::io::Read as _;

use serde_json::Value;

use super::csv;
use super::outcome::Failure;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZIP_MAGIC: [u8; 4] = *b"PK\x03\x04";

/// Formats Kusto knows that the emulator does not read (binary or special formats).
const UNREAD_FORMATS: [&str; 7] = [
    "avro",
    "apacheavro",
    "parquet",
    "orc",
    "sstream",
    "w3clogfile",
    "azmonstream",
];

/// Rows of a blob. `name` is the blob's path (used for the `.gz`/`.zip` extension).
pub(crate) fn rows(
    blob: &[u8],
    name: &str,
    format: &str,
    ignore_first_record: bool,
) -> Result<Vec<Value>, Failure> {
    if blob.is_empty() {
        return Err(Failure::permanent("BadRequest_EmptyBlob", "Blob is empty."));
    }
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".zip") || blob.starts_with(&ZIP_MAGIC) {
        return Err(Failure::permanent(
            "BadRequest_NotSupported",
            "kusto-dev's ingestion worker does not read zip archives; use gzip or plain text",
        ));
    }
    let unpacked;
    let data = if lower.ends_with(".gz") || blob.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(blob)
            .read_to_end(&mut out)
            .map_err(|e| {
                Failure::permanent(
                    "BadRequest_InvalidBlob",
                    format!("Blob is invalid: gzip: {e}"),
                )
            })?;
        unpacked = out;
        &unpacked[..]
    } else {
        blob
    };
    let text = std::str::from_utf8(data).map_err(|e| {
        Failure::permanent(
            "BadRequest_InvalidBlob",
            format!("Blob is invalid: not UTF-8 text ({e})"),
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = match format {
        "csv" => separated(text, ',')?,
        "tsv" | "tsve" => separated(text, '\t')?,
        "psv" => separated(text, '|')?,
        "scsv" => separated(text, ';')?,
        "sohsv" => separated(text, '\u{1}')?,
        "txt" => text
            .lines()
            .map(|l| Value::Array(vec![Value::String(l.to_string())]))
            .collect(),
        "raw" => vec![Value::Array(vec![Value::String(text.to_string())])],
        "json" => json_lines(text),
        "multijson" | "singlejson" => multi_json(text)?,
        f if UNREAD_FORMATS.contains(&f) => {
            return Err(Failure::permanent(
                "BadRequest_FormatNotSupported",
                format!("kusto-dev's ingestion worker does not read the {f} format"),
            ));
        }
        other => {
            return Err(Failure::permanent(
                "BadRequest_FormatNotSupported",
                format!("Format '{other}' isn't supported."),
            ));
        }
    };
    if ignore_first_record && is_record_format(format) && !rows.is_empty() {
        rows.remove(0);
    }
    if rows.is_empty() {
        return Err(Failure::permanent(
            "BadRequest_NoRecordsOrWrongFormat",
            format!("The blob has no records in the {format} format."),
        ));
    }
    Ok(rows)
}

/// Formats `ignoreFirstRecord` applies to (a header line).
fn is_record_format(format: &str) -> bool {
    matches!(
        format,
        "csv" | "tsv" | "tsve" | "psv" | "scsv" | "sohsv" | "txt"
    )
}

fn separated(text: &str, delimiter: char) -> Result<Vec<Value>, Failure> {
    Ok(csv::records(text, delimiter)?
        .into_iter()
        .map(|r| Value::Array(r.into_iter().map(Value::String).collect()))
        .collect())
}

/// `json`: one value per line; malformed lines are skipped, as the DM does.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object)
        .collect()
}

/// `multijson`: a stream of objects and/or arrays of objects, any layout.
fn multi_json(text: &str) -> Result<Vec<Value>, Failure> {
    let mut out = Vec::new();
    for value in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        let value = value.map_err(|e| {
            Failure::permanent(
                "BadRequest_InvalidBlob",
                format!("Blob is invalid: malformed JSON ({e})"),
            )
        })?;
        match value {
            Value::Array(items) => out.extend(items),
            other => out.push(other),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn csv_with_header_and_gzip() {
        let csv = b"id,name\n1,a\n2,b\n";
        let plain = rows(csv, "x.csv", "csv", true).unwrap();
        assert_eq!(
            plain,
            vec![serde_json::json!(["1", "a"]), serde_json::json!(["2", "b"])]
        );
        assert_eq!(rows(&gzip(csv), "x.csv.gz", "csv", true).unwrap(), plain);
        // Magic bytes suffice.
        assert_eq!(rows(&gzip(csv), "x", "csv", false).unwrap().len(), 3);
    }

    #[test]
    fn json_formats() {
        let lines = b"{\"a\":1}\nnot json\n{\"a\":2}\n";
        assert_eq!(rows(lines, "x.json", "json", false).unwrap().len(), 2);
        let multi = b"[{\"a\":1},{\"a\":2}] {\"a\":3}\n{\n\"a\": 4}";
        assert_eq!(rows(multi, "x", "multijson", false).unwrap().len(), 4);
        let code = |r: Result<Vec<Value>, Failure>| r.unwrap_err().code;
        assert_eq!(
            code(rows(b"{\"a\":", "x", "multijson", false)),
            "BadRequest_InvalidBlob"
        );
        assert_eq!(
            code(rows(b"nope\n", "x", "json", false)),
            "BadRequest_NoRecordsOrWrongFormat"
        );
    }

    #[test]
    fn failures_have_their_codes() {
        let code = |r: Result<Vec<Value>, Failure>| r.unwrap_err().code;
        assert_eq!(code(rows(b"", "x", "csv", false)), "BadRequest_EmptyBlob");
        assert_eq!(
            code(rows(b"h\n", "x", "csv", true)),
            "BadRequest_NoRecordsOrWrongFormat"
        );
        assert_eq!(
            code(rows(b"\x1f\x8bjunk", "x", "csv", false)),
            "BadRequest_InvalidBlob"
        );
        assert_eq!(
            code(rows(b"PK\x03\x04", "x", "csv", false)),
            "BadRequest_NotSupported"
        );
        assert_eq!(
            code(rows(b"a", "x", "parquet", false)),
            "BadRequest_FormatNotSupported"
        );
        assert_eq!(
            code(rows(&[0xff, 0xfe, 0x00], "x", "csv", false)),
            "BadRequest_InvalidBlob"
        );
    }
}

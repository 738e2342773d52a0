//! Delimiter-separated records (csv, tsv, psv, scsv, sohsv): fields split on one
//! character, `"`-quoted fields may hold the delimiter, newlines and `""` (a quote).
//! Blank lines are skipped; CRLF and LF both end a record.

use super::outcome::Failure;

/// Splits `text` into records of fields. Errors use the codes of DOC `error-codes.md`:
/// `Stream_ClosingQuoteMissing` for an unterminated quoted field and
/// `Stream_WrongNumberOfFields` when a record's field count differs from the first one's.
pub(crate) fn records(text: &str, delimiter: char) -> Result<Vec<Vec<String>>, Failure> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut record: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut quoted = false; // the current field started with a quote
    let mut in_quotes = false;
    let mut line = 1usize;
    let mut chars = text.chars().peekable();

    let mut end_record = |record: &mut Vec<String>, field: &mut String, quoted: &mut bool| {
        let blank = record.is_empty() && field.is_empty() && !*quoted;
        record.push(std::mem::take(field));
        *quoted = false;
        let done = std::mem::take(record);
        if !blank {
            out.push(done);
        }
    };

    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !quoted => {
                quoted = true;
                in_quotes = true;
            }
            c if c == delimiter => {
                record.push(std::mem::take(&mut field));
                quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                line += 1;
                end_record(&mut record, &mut field, &mut quoted);
            }
            _ => field.push(c),
        }
    }
    if in_quotes {
        return Err(Failure::permanent(
            "Stream_ClosingQuoteMissing",
            format!(
                "Invalid CSV format: closing quote missing (quoted field still open at line {line})"
            ),
        ));
    }
    if !record.is_empty() || !field.is_empty() || quoted {
        end_record(&mut record, &mut field, &mut quoted);
    }
    if let Some(first) = out.first().map(Vec::len)
        && let Some((n, bad)) = out.iter().enumerate().find(|(_, r)| r.len() != first)
    {
        return Err(Failure::permanent(
            "Stream_WrongNumberOfFields",
            format!(
                "Inconsistent number of fields in the input records: record {} has {} fields, the first has {first}",
                n + 1,
                bad.len()
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_crlf_and_blank_lines() {
        let r = records(
            "a,b\r\n\"x,1\",\"say \"\"hi\"\"\"\n\n\"multi\nline\",\n",
            ',',
        )
        .unwrap();
        assert_eq!(
            r,
            vec![
                vec!["a".to_string(), "b".into()],
                vec!["x,1".into(), "say \"hi\"".into()],
                vec!["multi\nline".into(), "".into()],
            ]
        );
        assert_eq!(records("a\tb\nc\td", '\t').unwrap().len(), 2);
        assert!(records("", ',').unwrap().is_empty());
    }

    #[test]
    fn malformed_records_fail_with_stream_codes() {
        assert_eq!(
            records("a,b\n\"open,c\n", ',').unwrap_err().code,
            "Stream_ClosingQuoteMissing"
        );
        assert_eq!(
            records("a,b\n1,2,3\n", ',').unwrap_err().code,
            "Stream_WrongNumberOfFields"
        );
    }
}

//! Just enough XML for Azure Storage responses: the bodies are flat and
//! machine-generated, so scanning for elements is reliable and avoids a parser dependency.

/// Text of every `<tag>…</tag>` element, in document order, entity-decoded.
pub(crate) fn elements(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(unescape(&after[..j]));
        rest = &after[j + close.len()..];
    }
    out
}

/// Text of the first `<tag>` element.
pub(crate) fn first(xml: &str, tag: &str) -> Option<String> {
    elements(xml, tag).into_iter().next()
}

/// Split a list response into the raw XML of each `<tag>…</tag>` block.
pub(crate) fn blocks<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

pub(crate) fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let Some(end) = tail.find(';') else {
            out.push_str(tail);
            return out;
        };
        let entity = &tail[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e if e.starts_with("#x") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => out.push(c),
            None => out.push_str(&tail[..=end]),
        }
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_message_list() {
        let x = "<?xml version=\"1.0\"?><QueueMessagesList><QueueMessage><MessageId>1</MessageId>\
                 <MessageText>a&amp;b</MessageText></QueueMessage><QueueMessage><MessageId>2</MessageId>\
                 <MessageText>&#x41;&lt;</MessageText></QueueMessage></QueueMessagesList>";
        assert_eq!(elements(x, "MessageText"), ["a&b", "A<"]);
        assert_eq!(blocks(x, "QueueMessage").len(), 2);
        assert_eq!(first(x, "MessageId").as_deref(), Some("1"));
        assert_eq!(unescape(&escape("<&'\">")), "<&'\">");
    }
}

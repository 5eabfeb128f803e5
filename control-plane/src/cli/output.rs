//! Plain-text tables, key/value blocks and value formatting shared by all commands.
//!
//! A tiny column formatter is enough for `weftctl`'s output and keeps heavy
//! dependencies out of the CLI. Times are shown as RFC 3339 UTC in both table and JSON
//! output, so what a person reads is what a script parses.

use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use weft_proto::v1::DataplaneKind;

use super::error::CliError;

/// Gap between table columns.
const GAP: &str = "  ";

/// A table with a header row; columns are left-aligned and padded to their widest
/// cell. The last column is not padded, so lines carry no trailing spaces.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells render empty, extra cells are ignored.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending in `\n`.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                std::iter::once(&self.headers)
                    .chain(&self.rows)
                    .filter_map(|row| row.get(i))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                if i > 0 {
                    line.push_str(GAP);
                }
                line.push_str(cell);
                if i + 1 < widths.len() {
                    let pad = width.saturating_sub(cell.chars().count());
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key:  value` lines with the values aligned, for single-object views.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{:<width$}{GAP}{v}\n", format!("{k}:")))
        .collect()
}

/// Unix seconds as RFC 3339 UTC (`2025-01-02T03:04:05Z`); `None` for 0 ("unknown").
pub fn rfc3339(secs: i64) -> Option<String> {
    if secs == 0 {
        return None;
    }
    let offset = Duration::from_secs(secs.unsigned_abs());
    let time = if secs > 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    }?;
    Some(humantime::format_rfc3339_seconds(time).to_string())
}

/// A time for a table cell: RFC 3339, or `-` when unknown.
pub fn time_cell(secs: i64) -> String {
    rfc3339(secs).unwrap_or_else(|| "-".to_string())
}

/// A time for JSON: an RFC 3339 string, or `null` when unknown.
pub fn time_json(secs: i64) -> Value {
    rfc3339(secs).map_or(Value::Null, Value::String)
}

/// Seconds since the Unix epoch now.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A lifetime the way users type it: `24h`, `90m`, `45s`, `7d`.
pub fn duration_text(secs: u64) -> String {
    match secs {
        0 => "0s".to_string(),
        s if s % 86_400 == 0 && s >= 7 * 86_400 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The kind as users call it (`sidecar`, `gateway`, `ingress`).
pub fn kind_name(kind: DataplaneKind) -> &'static str {
    match kind {
        DataplaneKind::Unspecified => "unspecified",
        DataplaneKind::Sidecar => "sidecar",
        DataplaneKind::Gateway => "gateway",
        DataplaneKind::Ingress => "ingress",
    }
}

/// `yes`/`no` for table cells.
pub fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_string()
}

/// `-` for empty table cells, so columns stay readable.
pub fn or_dash(value: &str) -> String {
    if value.is_empty() { "-" } else { value }.to_string()
}

/// Writes to stdout. A closed pipe (`weftctl ... | head`) is not an error.
pub fn print(text: &str) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(CliError::Runtime(format!("cannot write the output: {e}")))
        }
        _ => Ok(()),
    }
}

/// Writes one pretty JSON document to stdout.
pub fn print_json(value: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Runtime(format!("cannot encode the output as JSON: {e}")))?;
    print(&format!("{text}\n"))
}

/// Informational lines and warnings go to stderr so stdout stays parseable.
pub fn note(text: &str) {
    let _ = writeln!(io::stderr().lock(), "{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell() {
        let mut t = Table::new(&["NAME", "PROTOCOL", "PORT"]);
        t.row(vec!["web".into(), "http2".into(), "8080".into()]);
        t.row(vec![
            "payments-api".into(),
            "tcp (not set)".into(),
            "-".into(),
        ]);
        assert_eq!(
            t.render(),
            "NAME          PROTOCOL       PORT\n\
             web           http2          8080\n\
             payments-api  tcp (not set)  -\n"
        );
    }

    #[test]
    fn empty_table_is_just_the_header_and_no_trailing_spaces() {
        let mut t = Table::new(&["A", "LONG HEADER", "B"]);
        assert_eq!(t.render(), "A  LONG HEADER  B\n");
        t.row(vec!["x".into(), String::new(), String::new()]);
        assert_eq!(t.render(), "A  LONG HEADER  B\nx\n");
    }

    #[test]
    fn alignment_counts_characters_not_bytes() {
        let mut t = Table::new(&["K", "V"]);
        t.row(vec!["é".into(), "1".into()]);
        t.row(vec!["ab".into(), "2".into()]);
        assert_eq!(t.render(), "K   V\né   1\nab  2\n");
    }

    #[test]
    fn key_values_align() {
        let text = key_values(&[("name", "web".into()), ("protocol", "http".into())]);
        assert_eq!(text, "name:      web\nprotocol:  http\n");
    }

    #[test]
    fn times_and_durations() {
        assert_eq!(rfc3339(0), None);
        assert_eq!(rfc3339(1_700_000_000).unwrap(), "2023-11-14T22:13:20Z");
        assert_eq!(time_json(0), Value::Null);
        assert_eq!(duration_text(86_400), "24h");
        assert_eq!(duration_text(7 * 86_400), "7d");
        assert_eq!(duration_text(90 * 60), "90m");
        assert_eq!(duration_text(61), "61s");
    }
}

//! How results are shown, decided once: a table for people on a terminal, the
//! server's grepable lines unchanged when piped, JSON on request.

use std::io::{IsTerminal, Write};

use comfy_table::{ContentArrangement, Table, presets};
use crmkit_server::wire::line::parse_line;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Table,
    Json,
}

impl Format {
    /// `--json` > `--format` > table on a terminal, text otherwise.
    pub fn decide(json: bool, format: Option<Format>) -> Format {
        if json {
            return Format::Json;
        }
        format.unwrap_or(if std::io::stdout().is_terminal() {
            Format::Table
        } else {
            Format::Text
        })
    }
}

/// Writes to stdout; a closed pipe is not an error (`crmkit … | head`).
pub fn emit(s: &str) {
    let mut out = std::io::stdout().lock();
    if out
        .write_all(s.as_bytes())
        .and_then(|_| out.flush())
        .is_err()
    {
        std::process::exit(0);
    }
}

/// Server text as a table: one row per record line (columns: handle, then
/// every key in order of first appearance); `# ` lines follow the table.
pub fn table(text: &str) -> String {
    let mut keys: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for line in text.lines() {
        if let Some(p) = parse_line(line) {
            for (k, _) in &p.fields {
                if !keys.contains(k) && k != "created_at" && k != "updated_at" {
                    keys.push(k.clone());
                }
            }
            rows.push(p);
        } else if !line.is_empty() {
            notes.push(line.to_string());
        }
    }
    let mut out = String::new();
    if !rows.is_empty() {
        let mut t = Table::new();
        t.load_style(presets::UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic);
        if std::env::var_os("NO_COLOR").is_some() {
            t.force_no_tty();
        }
        let mut header = vec!["handle".to_string()];
        header.extend(keys.iter().cloned());
        t.set_header(header);
        for r in &rows {
            let mut cells = vec![r.handle.clone()];
            cells.extend(keys.iter().map(|k| r.get(k).unwrap_or("").to_string()));
            t.add_row(cells);
        }
        out.push_str(&t.to_string());
        out.push('\n');
    }
    for n in notes {
        out.push_str(&n);
        out.push('\n');
    }
    out
}

/// Prints an answer in the chosen format (JSON is pretty-printed).
pub fn show(format: Format, text: &str) {
    match format {
        Format::Text => emit(text),
        Format::Table => emit(&table(text)),
        Format::Json => {
            let pretty = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or_else(|| text.to_string());
            emit(&format!("{pretty}\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_have_a_column_per_key() {
        let t = table(
            "contact/c_1 name=\"Jane Doe\" stage=lead\ncontact/c_2 email=a@b.c\n# 2 contacts\n",
        );
        let header = t.lines().nth(1).unwrap();
        for col in ["handle", "name", "stage", "email"] {
            assert!(header.contains(col), "{t}");
        }
        assert!(t.contains("Jane Doe") && t.ends_with("# 2 contacts\n"));
    }
}

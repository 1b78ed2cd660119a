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

/// Writes to stdout. A closed pipe is not an error (`crmkit … | head`);
/// any other failure to write (a full disk, a closed stdout) is, with exit
/// 1, so that an export that did not reach its file never reports success.
pub fn emit(s: &str) {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("crmkit: error: cannot write the output: {e}");
            std::process::exit(1);
        }
    }
}

/// Server text as a table: one row per record line (columns: handle, then
/// every key in order of first appearance); `# ` lines follow the table.
pub fn table(text: &str) -> String {
    table_within(text, None)
}

/// [`table`] for a terminal `width` columns wide (`None`: the terminal's own
/// width, when there is one). A table wider than the terminal is shown as
/// one block of `key value` lines per record instead (like psql's expanded
/// display): wrapped cells would break ids, emails and times mid-word, and a
/// copied id must be whole.
fn table_within(text: &str, width: Option<u16>) -> String {
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
        if let Some(w) = width {
            t.set_width(w);
        }
        if std::env::var_os("NO_COLOR").is_some() {
            t.force_no_tty();
        }
        let mut header = vec!["handle".to_string()];
        header.extend(keys.iter().cloned());
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let mut cells = vec![r.handle.clone()];
                cells.extend(keys.iter().map(|k| r.get(k).unwrap_or("").to_string()));
                cells
            })
            .collect();
        // Each column's widest cell, plus its padding and border.
        let natural: usize = (0..header.len())
            .map(|i| {
                std::iter::once(&header[i])
                    .chain(cells.iter().map(|row| &row[i]))
                    .map(|c| c.lines().map(|l| l.chars().count()).max().unwrap_or(0))
                    .max()
                    .unwrap_or(0)
                    + 3
            })
            .sum::<usize>()
            + 1;
        if t.width().is_some_and(|w| natural > usize::from(w)) {
            out.push_str(&blocks(&header, &cells));
        } else {
            t.set_header(header);
            for row in cells {
                t.add_row(row);
            }
            out.push_str(&t.to_string());
            out.push('\n');
        }
    }
    for n in notes {
        out.push_str(&n);
        out.push('\n');
    }
    out
}

/// Records as blocks: the handle, then one indented `key  value` line per
/// field that has a value (multi-line values continue under the value),
/// with a blank line between records.
fn blocks(header: &[String], cells: &[Vec<String>]) -> String {
    let key_width = header[1..]
        .iter()
        .map(|k| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (n, row) in cells.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        out.push_str(&row[0]);
        out.push('\n');
        for (key, value) in header[1..].iter().zip(&row[1..]) {
            if value.is_empty() {
                continue;
            }
            let mut lines = value.lines();
            let first = lines.next().unwrap_or("");
            out.push_str(&format!("  {key:<key_width$}  {first}\n"));
            for more in lines {
                out.push_str(&format!("  {:<key_width$}  {more}\n", ""));
            }
        }
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

    const WIDE: &str = "contact/c_7k2m9q4x1d3f name=\"Jane Doe\" email=jane@acme.example stage=lead title=CTO company_id=co_p3v8n2w6za00 tags=vip,renewal\ncontact/c_0000000000zz name=Ann\n# 2 contacts\n";

    #[test]
    fn a_table_wider_than_the_terminal_becomes_blocks() {
        // 105 columns wide: blocks at 104, a table at 105.
        assert!(table_within(WIDE, Some(104)).starts_with("contact/c_7k2m9q4x1d3f\n  name"));
        let t = table_within(WIDE, Some(105));
        assert!(t.lines().nth(1).unwrap().contains("company_id"), "{t}");
    }

    #[test]
    fn blocks_show_each_field_with_a_value() {
        let t = table_within(WIDE, Some(40));
        assert_eq!(
            t,
            "contact/c_7k2m9q4x1d3f\n  name        Jane Doe\n  email       jane@acme.example\n  stage       lead\n  title       CTO\n  company_id  co_p3v8n2w6za00\n  tags        vip,renewal\n\ncontact/c_0000000000zz\n  name        Ann\n# 2 contacts\n"
        );
    }

    #[test]
    fn a_table_that_fits_or_has_room_stays_a_table() {
        for width in [200, 105] {
            let t = table_within(WIDE, Some(width));
            assert!(
                t.lines().nth(1).unwrap().contains("company_id"),
                "{width}: {t}"
            );
            assert!(
                t.lines().all(|l| l.chars().count() <= usize::from(width)),
                "{width}: {t}"
            );
        }
        let t = table_within("contact/c_1 name=\"Jane Doe\"\n", Some(30));
        assert!(t.contains("handle"), "{t}");
    }
}

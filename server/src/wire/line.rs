//! The grepable plain-text record line of SPEC §2 (`HANDLE key=value …`) and
//! `# ` comment lines: how values and keys are quoted and escaped, and the
//! inverse parser used by tests and the CLI.
//!
//! The guarantee this module owns: whatever user data goes into a line, the
//! output is exactly one line (no CR, LF or other line or paragraph separator),
//! it cannot be mistaken for a second record or a `# ` trailer, invisible
//! direction-changing characters are shown escaped, and `parse_line` gets the
//! original keys and values back.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Builds one record line. Fields come out in the order they are added, which
/// is what keeps the per-type field order fixed.
#[derive(Clone, Debug)]
pub struct LineBuilder {
    line: String,
}

impl LineBuilder {
    /// Starts a line with the record's handle. Handles are server-made, but the
    /// handle still goes through `quote` so a bad one cannot break the line.
    pub fn new(handle: &str) -> Self {
        LineBuilder {
            line: quote(handle).into_owned(),
        }
    }

    /// Appends ` key=value`, or nothing when `value` is empty: the wire leaves
    /// out empty and null fields alike.
    pub fn field(&mut self, key: &str, value: &str) -> &mut Self {
        if value.is_empty() {
            return self;
        }
        self.line.push(' ');
        push_key(&mut self.line, key);
        self.line.push('=');
        self.line.push_str(&quote(value));
        self
    }

    /// `field` with the value always in quotes: for text that would read as
    /// another type bare (a custom string "12" against the number 12).
    pub fn field_quoted(&mut self, key: &str, value: &str) -> &mut Self {
        self.line.push(' ');
        push_key(&mut self.line, key);
        self.line.push('=');
        self.line.push_str(&quote_always(value));
        self
    }

    /// `field` for optional values; `None` is left out.
    pub fn opt(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.field(key, v),
            None => self,
        }
    }

    /// The line, without a trailing newline.
    pub fn finish(self) -> String {
        self.line
    }
}

/// Quotes `v` when it could not be read back as one bare token: it is empty,
/// contains a space, `"`, `=`, `\` or a character that does not print as
/// itself, or starts with `#`. Inside the quotes `"` and `\` are
/// backslash-escaped, newline, CR and tab become `\n` `\r` `\t`, and other
/// invisible characters become `\u{HEX}`.
pub fn quote(v: &str) -> Cow<'_, str> {
    // Fast path: visible ASCII other than `"`, `=` and `\` never needs quotes.
    if !v.is_empty()
        && !v.starts_with('#')
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'=' | b'\\'))
    {
        return Cow::Borrowed(v);
    }
    let needs_quotes = v.is_empty()
        || v.starts_with('#')
        || v.chars()
            .any(|c| matches!(c, ' ' | '"' | '=' | '\\') || needs_escape(c));
    if needs_quotes {
        Cow::Owned(quote_always(v))
    } else {
        Cow::Borrowed(v)
    }
}

/// `text` made safe to print inside one line without adding quotes (comment
/// lines, error messages, log lines): newline, CR and tab become `\n` `\r`
/// `\t`, other invisible characters `\u{HEX}`. Backslashes and quotes stay as
/// they are, because this text is read by people and agents, not parsed back.
pub fn escape_inline(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    out
}

/// A `# ` line carrying `text`, kept to one line by `escape_inline`.
pub fn comment(text: &str) -> String {
    format!("# {}", escape_inline(text))
}

/// A record line read back by `parse_line`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedLine {
    pub handle: String,
    pub fields: Vec<(String, String)>,
}

impl ParsedLine {
    /// The first value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses one record line as `LineBuilder` writes it. Returns `None` for `#`
/// lines, empty lines, and anything `LineBuilder` could not have written (a
/// parser that guessed would let a damaged line pass as a record).
pub fn parse_line(line: &str) -> Option<ParsedLine> {
    if line.starts_with('#') {
        return None;
    }
    let mut rest = line;
    let handle = take_value(&mut rest)?;
    let mut fields = Vec::new();
    while !rest.is_empty() {
        rest = rest.strip_prefix(' ')?;
        let key = take_key(&mut rest)?;
        rest = rest.strip_prefix('=')?;
        let value = take_value(&mut rest)?;
        fields.push((key, value));
    }
    Some(ParsedLine { handle, fields })
}

/// Characters that must never appear raw in a line: every control character
/// (C0, DEL, C1 — which includes U+0085 NEXT LINE), every whitespace other
/// than the plain space (tabs, U+2028/U+2029, no-break and other wide spaces
/// that would hide token boundaries), and invisible format characters that
/// reorder or hide text on screen. ZWJ/ZWNJ are left alone: scripts and emoji
/// need them and they cannot fake a line or a token boundary.
fn needs_escape(c: char) -> bool {
    c != ' '
        && (c.is_control()
            || c.is_whitespace()
            || matches!(
                c,
                '\u{061C}'
                    | '\u{200B}'
                    | '\u{200E}'
                    | '\u{200F}'
                    | '\u{202A}'..='\u{202E}'
                    | '\u{2060}'..='\u{2064}'
                    | '\u{2066}'..='\u{206F}'
                    | '\u{FEFF}'
                    | '\u{FFF9}'..='\u{FFFB}'
            ))
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if needs_escape(c) => {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
        c => out.push(c),
    }
}

fn quote_always(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => push_escaped(&mut out, c),
        }
    }
    out.push('"');
    out
}

fn is_bare_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Keys are bare when made of `[A-Za-z0-9_.-]`. Custom keys are user data, so
/// only their user part is quoted (`custom."my key"`), keeping `custom.` greppable.
fn push_key(out: &mut String, key: &str) {
    if !key.is_empty() && key.chars().all(is_bare_key_char) {
        out.push_str(key);
    } else if let Some(user_part) = key.strip_prefix("custom.") {
        out.push_str("custom.");
        out.push_str(&quote_always(user_part));
    } else {
        out.push_str(&quote_always(key));
    }
}

/// A key: bare key characters, then optionally one quoted part.
fn take_key(rest: &mut &str) -> Option<String> {
    let bare_len = rest
        .find(|c: char| !is_bare_key_char(c))
        .unwrap_or(rest.len());
    let mut key = rest[..bare_len].to_owned();
    *rest = &rest[bare_len..];
    if rest.starts_with('"') {
        key.push_str(&take_quoted(rest)?);
    } else if key.is_empty() {
        return None;
    }
    Some(key)
}

/// A value (or the handle): a quoted string, or a bare run up to the next space
/// made only of characters `quote` leaves bare.
fn take_value(rest: &mut &str) -> Option<String> {
    if rest.starts_with('"') {
        let v = take_quoted(rest)?;
        return (rest.is_empty() || rest.starts_with(' ')).then_some(v);
    }
    let end = rest.find(' ').unwrap_or(rest.len());
    let bare = &rest[..end];
    if bare.is_empty()
        || bare.starts_with('#')
        || bare
            .chars()
            .any(|c| matches!(c, '"' | '=' | '\\') || needs_escape(c))
    {
        return None;
    }
    *rest = &rest[end..];
    Some(bare.to_owned())
}

/// A `"…"` string starting at `rest`; leaves `rest` just past the closing quote.
fn take_quoted(rest: &mut &str) -> Option<String> {
    let mut chars = rest.strip_prefix('"')?.char_indices();
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                // `i` counts from after the opening quote, which is one byte.
                *rest = &rest[1 + i + 1..];
                return Some(out);
            }
            '\\' => match chars.next()?.1 {
                '"' => out.push('"'),
                '\\' => out.push('\\'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'u' => {
                    if chars.next()?.1 != '{' {
                        return None;
                    }
                    let mut hex = String::new();
                    loop {
                        match chars.next()?.1 {
                            '}' => break,
                            h if h.is_ascii_hexdigit() && hex.len() < 6 => hex.push(h),
                            _ => return None,
                        }
                    }
                    let code = u32::from_str_radix(&hex, 16).ok()?;
                    out.push(char::from_u32(code)?);
                }
                _ => return None,
            },
            // Raw invisible characters are never written inside quotes, so a
            // line holding one was not written by `LineBuilder`.
            c if needs_escape(c) => return None,
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(handle: &str, fields: &[(&str, &str)]) -> String {
        let mut b = LineBuilder::new(handle);
        for (k, v) in fields {
            b.field(k, v);
        }
        b.finish()
    }

    #[test]
    fn plain_values_stay_bare() {
        for v in [
            "jane@acme.com",
            "lead",
            "vip,renewal",
            "1299.00",
            "company/co_p3v8n2w6za",
            "ünïcødé",
            "😀",
            "👨\u{200d}👩",
            "a#b",
            "50%_off;",
            "it's",
        ] {
            assert_eq!(quote(v), v);
            assert!(matches!(quote(v), Cow::Borrowed(_)));
        }
    }

    #[test]
    fn quotes_and_escapes_each_special_char() {
        let cases = [
            ("", r#""""#),
            ("Jane Doe", r#""Jane Doe""#),
            ("say \"hi\"", r#""say \"hi\"""#),
            ("a=b", r#""a=b""#),
            ("C:\\dir", r#""C:\\dir""#),
            ("#1", r##""#1""##),
            ("a\nb", r#""a\nb""#),
            ("a\rb", r#""a\rb""#),
            ("a\tb", r#""a\tb""#),
            ("a\0b", r#""a\u{0}b""#),
            ("a\u{7f}b", r#""a\u{7f}b""#),
            ("a\u{85}b", r#""a\u{85}b""#),
            ("a\u{2028}b", r#""a\u{2028}b""#),
            ("a\u{2029}b", r#""a\u{2029}b""#),
            ("a\u{a0}b", r#""a\u{a0}b""#),
            ("a\u{202e}b", r#""a\u{202e}b""#),
            ("a\u{feff}b", r#""a\u{feff}b""#),
            ("a\u{1b}[31mb", r#""a\u{1b}[31mb""#),
        ];
        for (raw, quoted) in cases {
            assert_eq!(quote(raw), quoted, "{raw:?}");
        }
    }

    #[test]
    fn builder_skips_empty_and_none_and_orders_fields() {
        let mut b = LineBuilder::new("contact/c_7k2m9q4x1d3f");
        b.field("name", "Jane Doe")
            .field("email", "")
            .opt("phone", None)
            .opt("title", Some("CTO"))
            .opt("stage", Some(""))
            .field("tags", "vip,renewal");
        assert_eq!(
            b.finish(),
            r#"contact/c_7k2m9q4x1d3f name="Jane Doe" title=CTO tags=vip,renewal"#
        );
    }

    #[test]
    fn custom_keys_are_quoted_after_the_dot() {
        assert_eq!(
            line(
                "contact/c_7k2m9q4x1d3f",
                &[("custom.my key", "x"), ("custom.ok_key-1.2", "y")]
            ),
            r#"contact/c_7k2m9q4x1d3f custom."my key"=x custom.ok_key-1.2=y"#
        );
        assert_eq!(line("h", &[("bad key", "x")]), r#"h "bad key"=x"#);
        assert_eq!(line("h", &[("", "x")]), r#"h ""=x"#);
        assert_eq!(line("h", &[("custom.a=b\n", "x")]), r#"h custom."a=b\n"=x"#);
        let p = parse_line(r#"h custom."my key"=x"#).unwrap();
        assert_eq!(p.get("custom.my key"), Some("x"));
    }

    #[test]
    fn injected_lines_stay_inside_one_line() {
        for evil in [
            "\ncontact/c_fake name=x",
            "\r\n# next: x",
            "x\n# 0 contacts match",
            "\" contact/c_fake name=\"x",
            "\\\" forged=1",
            "\u{2028}contact/c_fake",
            "\u{85}# next: x",
        ] {
            let out = line("contact/c_7k2m9q4x1d3f", &[("name", evil), (evil, "v")]);
            assert_eq!(out.lines().count(), 1, "{out:?}");
            assert!(!out.contains(['\n', '\r', '\u{85}', '\u{2028}']), "{out:?}");
            let p = parse_line(&out).unwrap();
            assert_eq!(p.handle, "contact/c_7k2m9q4x1d3f");
            assert_eq!(
                p.fields,
                vec![
                    ("name".to_owned(), evil.to_owned()),
                    (evil.to_owned(), "v".to_owned())
                ]
            );
        }
        // A handle is escaped too, and can never open a `#` line.
        let out = line("# next: x\ncontact/c_fake", &[]);
        assert!(out.starts_with('"') && !out.contains('\n'), "{out:?}");
    }

    #[test]
    fn comments_are_one_line() {
        assert_eq!(comment("created"), "# created");
        assert_eq!(comment("next: abc"), "# next: abc");
        assert_eq!(comment("a\r\n# next: x"), r"# a\r\n# next: x");
        assert_eq!(
            comment("say \"hi\" C:\\x\t\u{2028}\u{85}"),
            r#"# say "hi" C:\x\t\u{2028}\u{85}"#
        );
        assert_eq!(escape_inline("a\nb"), r"a\nb");
        assert_eq!(parse_line(&comment("x")), None);
    }

    #[test]
    fn parse_line_reads_what_builder_writes() {
        let p =
            parse_line(r#"deal/d_4h7s1k9m3e title="Big \"one\"" amount=1299.00 x="a\u{2028}b""#)
                .unwrap();
        assert_eq!(p.handle, "deal/d_4h7s1k9m3e");
        assert_eq!(p.get("title"), Some("Big \"one\""));
        assert_eq!(p.get("amount"), Some("1299.00"));
        assert_eq!(p.get("x"), Some("a\u{2028}b"));
        assert_eq!(p.get("nope"), None);
        assert_eq!(parse_line("contact/c_x").unwrap().fields, vec![]);
    }

    #[test]
    fn parse_line_refuses_what_builder_cannot_write() {
        for bad in [
            "",
            "# created",
            "#x",
            " contact/c_x",
            "contact/c_x ",
            "contact/c_x  a=b",
            "contact/c_x a",
            "contact/c_x a=",
            "contact/c_x =b",
            "contact/c_x a=b=c",
            "contact/c_x a=\"b",
            "contact/c_x a=\"b\"c",
            "contact/c_x a=\"\\q\"",
            "contact/c_x a=\"\\u{110000}\"",
            "contact/c_x a=\"\\u{d800}\"",
            "contact/c_x a=\"\\u{}\"",
            "contact/c_x a=\"\\u{1234567}\"",
            "contact/c_x a=\"\\u41\"",
            "contact/c_x a=\"x\ny\"",
            "contact/c_x a=b\tc",
            "contact/c_x a=b\\c",
            "contact/c_x a=#b",
        ] {
            assert_eq!(parse_line(bad), None, "{bad:?}");
        }
    }

    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[ a-z=\"\\\\#\n\r\t\u{85}\u{2028}\u{202e}.]{0,12}",
            "custom\\.[ -~\u{2029}]{0,8}",
        ]
    }

    proptest! {
        #[test]
        fn any_fields_round_trip_on_one_line(
            handle in any_text(),
            fields in proptest::collection::vec((any_text(), any_text()), 0..8),
        ) {
            let mut b = LineBuilder::new(&handle);
            for (k, v) in &fields {
                b.field(k, v);
            }
            let out = b.finish();
            prop_assert!(!out.contains(['\n', '\r']));
            prop_assert!(!out.starts_with('#'));
            let parsed = parse_line(&out);
            prop_assert!(parsed.is_some(), "unparseable: {:?}", out);
            let parsed = parsed.unwrap();
            prop_assert_eq!(parsed.handle, handle);
            let expected: Vec<(String, String)> =
                fields.into_iter().filter(|(_, v)| !v.is_empty()).collect();
            prop_assert_eq!(parsed.fields, expected);
        }

        #[test]
        fn comments_never_break_lines(text in any_text()) {
            let c = comment(&text);
            prop_assert!(c.starts_with("# "));
            prop_assert!(!c.chars().any(needs_escape));
        }

        #[test]
        fn parse_line_never_panics(s in any_text()) {
            let _ = parse_line(&s);
        }
    }
}

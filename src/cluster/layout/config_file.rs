//! The mirror configuration file (`gpaddmirrors -o` writes it, `-i` reads it):
//!
//! ```text
//! filespaceOrder=[<filespace>[:<filespace>...]]
//! mirror<N>=<content>:<address>:<port>:<mirror replication port>:<primary replication port>:<location>[:<location>...]
//! ```
//!
//! Lines are trimmed of spaces and tabs at both ends; blank lines and lines
//! starting with `#` are skipped. The first other line is `filespaceOrder=`.
//! Each mirror line has one location for the default filespace, then one per
//! name of `filespaceOrder`, in that order. An IPv6 address is written in
//! brackets (`[::1]`). Positions are 1-based; columns count characters.

use super::{LayoutError, LineOrigin, MirrorConfig, MirrorLine, Origin};
use crate::protocol::handshake::valid_filespace_name;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// What kind of mistake a [`ParseError`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// Nothing but blank and comment lines.
    Empty,
    /// The first line that is not blank or a comment is not `filespaceOrder=`.
    MissingFilespaceOrder,
    /// A `filespaceOrder=` line after other lines, or a second one.
    MisplacedFilespaceOrder,
    /// A line without `=`.
    NoEquals,
    /// A key that is neither `filespaceOrder` nor `mirror<N>`.
    UnknownKey,
    /// `mirror` not followed by a number.
    BadKey,
    DuplicateKey,
    /// A fullwidth `：`, `＝`, digit or space typed by an input method.
    Fullwidth,
    /// A space or tab inside the line.
    Whitespace,
    ControlCharacter,
    /// Text or fields after the line's last field.
    TrailingText,
    MissingField,
    EmptyField,
    NotANumber,
    OutOfRange,
    BadAddress,
    EmptyLocation,
    BadFilespaceName,
    DuplicateFilespace,
    /// A byte-order mark after the file's start.
    ByteOrderMark,
    /// A CR inside a line (CR-only line endings).
    LineEnding,
    /// Not UTF-8 text (UTF-16, Latin-1, …).
    Encoding,
    /// A location or address longer than a path or host name can be.
    TooLong,
}

/// One mistake in a configuration file: where, what is wrong, what to do.
/// Displays as `FILE:LINE:COLUMN: WHAT; FIX`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {what}; {fix}")]
pub struct ParseError {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters (not bytes).
    pub column: usize,
    pub kind: ParseErrorKind,
    pub what: String,
    pub fix: String,
}

/// Every mistake found in one file, in file order (at most one per line,
/// plus the file-level ones). Never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ParseErrors(pub Vec<ParseError>);

impl fmt::Display for ParseErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

const LINE_SYNTAX: &str = "mirror<N>=<content>:<address>:<port>:<mirror replication port>:<primary replication port>:<location>[:<location>...]";
const FIELDS: [&str; 6] =
    ["content", "address", "port", "mirror replication port", "primary replication port", "location"];

/// Characters an input method types in place of ASCII punctuation.
fn fullwidth_name(c: char) -> Option<&'static str> {
    match c {
        '\u{ff1a}' => Some("fullwidth colon \"：\" (U+FF1A)"),
        '\u{ff1d}' => Some("fullwidth equals sign \"＝\" (U+FF1D)"),
        '\u{3000}' => Some("ideographic space (U+3000)"),
        '\u{ff10}'..='\u{ff19}' => Some("fullwidth digit"),
        _ => None,
    }
}

/// Characters no field may hold (so `format` then `parse` always round-trips).
fn forbidden(c: char) -> bool {
    c.is_whitespace() || c.is_control() || fullwidth_name(c).is_some()
}

/// User text in a message: quoted, and cut in the middle when long.
fn q(text: &str) -> String {
    format!("{:?}", super::elide(text))
}

/// Longest path a location may be (Linux's PATH_MAX less the NUL), and
/// longest name in it.
const MAX_PATH: usize = 4095;
const MAX_NAME: usize = 255;

/// An IPv6 address written without brackets, as the text from the address
/// field to the first location shows it (`::1:41000:42000:43000:/m` →
/// `::1`): its colons were read as separators.
fn unbracketed_ipv6(from_address: &str) -> Option<String> {
    let upto = from_address.split_once(":/").map_or(from_address, |(a, _)| a);
    let mut parts = upto.rsplitn(4, ':');
    let (_, _, _) = (parts.next()?, parts.next()?, parts.next()?);
    let address = parts.next()?;
    let ipv6 = address.contains(':') && address.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
    ipv6.then(|| address.to_string())
}

/// Where a file stops being UTF-8 text, and what it seems to be instead.
fn encoding_error(bytes: &[u8], file_name: &str) -> ParseError {
    let bad = match std::str::from_utf8(bytes) {
        Ok(_) => bytes.iter().position(|&b| b == 0).unwrap_or(0),
        Err(e) => e.valid_up_to(),
    };
    let good = String::from_utf8_lossy(&bytes[..bad]);
    let line_start = good.rfind('\n').map_or(0, |i| i + 1);
    let (line, column) = (good.matches('\n').count() + 1, good[line_start..].chars().count() + 1);
    let seems = if bytes.starts_with(&[0xff, 0xfe, 0, 0]) || bytes.starts_with(&[0, 0, 0xfe, 0xff]) {
        "UTF-32 (it starts with a UTF-32 byte-order mark)"
    } else if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
        "UTF-16 (it starts with a UTF-16 byte-order mark)"
    } else if bytes.contains(&0) {
        "UTF-16 or UTF-32 (it holds NUL bytes, as their ASCII characters do)"
    } else {
        "in a single-byte encoding such as Latin-1 or Windows-1252"
    };
    ParseError {
        file: file_name.to_string(),
        line,
        column,
        kind: ParseErrorKind::Encoding,
        what: format!("byte {bad} (0x{:02X}) is not UTF-8 text: the file seems to be {seems}", bytes[bad]),
        fix: "save it as UTF-8 (for example: iconv -f UTF-16 -t UTF-8 FILE > FILE.new, naming its real encoding)"
            .into(),
    }
}

/// The 1-based column (in characters) of byte `at` of `raw`.
fn column(raw: &str, at: usize) -> usize {
    raw[..at].chars().count() + 1
}

struct Line<'a> {
    file: &'a str,
    raw: &'a str,
    number: usize,
}

impl Line<'_> {
    fn err(&self, at: usize, kind: ParseErrorKind, what: String, fix: String) -> ParseError {
        ParseError { file: self.file.to_string(), line: self.number, column: column(self.raw, at), kind, what, fix }
    }
}

#[derive(Default)]
struct Parser {
    errors: Vec<ParseError>,
    config: MirrorConfig,
    origin: Origin,
    /// (line, column) of the first line that is not blank or a comment.
    first: Option<(usize, usize)>,
    order_seen: bool,
    keys: BTreeMap<u32, usize>,
}

impl MirrorConfig {
    /// Read a configuration file's bytes: UTF-8 text (a leading BOM
    /// allowed). UTF-16, UTF-32 and other encodings are refused with the
    /// line and column of the first byte that is not UTF-8 and what the
    /// file seems to be.
    pub fn parse_bytes(bytes: &[u8], file_name: &str) -> Result<MirrorConfig, ParseErrors> {
        match std::str::from_utf8(bytes) {
            Ok(text) if !text.contains('\0') => Self::parse(text, file_name),
            Ok(_) | Err(_) => Err(ParseErrors(vec![encoding_error(bytes, file_name)])),
        }
    }

    /// Read a configuration file's text. `file_name` is only used in the
    /// messages. Every line is checked; all mistakes are returned together.
    pub fn parse(text: &str, file_name: &str) -> Result<MirrorConfig, ParseErrors> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut p = Parser::default();
        p.origin.file = file_name.to_string();
        for (i, raw) in text.split('\n').enumerate() {
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            let start = raw.len() - raw.trim_start_matches([' ', '\t']).len();
            let end = raw.trim_end_matches([' ', '\t']).len().max(start);
            let body = &raw[start..end];
            if body.is_empty() || body.starts_with('#') {
                continue;
            }
            let line = Line { file: file_name, raw, number: i + 1 };
            if p.first.is_none() {
                p.first = Some((line.number, column(raw, start)));
            }
            if let Err(e) = p.line(&line, start, end) {
                p.errors.push(e);
            }
        }
        let file = file_name.to_string();
        match p.first {
            None => p.errors.push(ParseError {
                file,
                line: 1,
                column: 1,
                kind: ParseErrorKind::Empty,
                what: "the file has no filespaceOrder= line and no mirror lines".into(),
                fix: format!("write filespaceOrder= (followed by the other filespaces' names, if any), then one line per mirror: {LINE_SYNTAX}"),
            }),
            // A file whose lines end in CR alone is one line: its CR says it all.
            Some(_) if p.errors.iter().any(|e| e.kind == ParseErrorKind::LineEnding) => {}
            Some((line, column)) if !p.order_seen => p.errors.push(ParseError {
                file,
                line,
                column,
                kind: ParseErrorKind::MissingFilespaceOrder,
                what: "the filespaceOrder= line is missing: it must be the first line that is not blank or a comment".into(),
                fix: "add filespaceOrder= at the top (with nothing after = when the cluster has only the default filespace)"
                    .into(),
            }),
            Some(_) => {}
        }
        if p.errors.is_empty() {
            p.config.origin = Some(p.origin);
            Ok(p.config)
        } else {
            p.errors.sort_by_key(|e| (e.line, e.column));
            Err(ParseErrors(p.errors))
        }
    }

    /// The file's text, as `parse` reads it back. Refuses what the format
    /// cannot carry (a `:` or space in a location, a bad filespace name, a
    /// location count that does not match `filespace_order`, …).
    pub fn format(&self) -> Result<String, LayoutError> {
        let bad = |mirror: &str, what: String| LayoutError::Unrepresentable { mirror: mirror.to_string(), what };
        for (i, name) in self.filespace_order.iter().enumerate() {
            if !valid_filespace_name(name) {
                return Err(bad(
                    "filespaceOrder",
                    format!("filespace name {} is not 1 to 64 letters, digits, '_', '-' or '.'", q(name)),
                ));
            }
            if self.filespace_order[..i].contains(name) {
                return Err(bad("filespaceOrder", format!("filespace {name} is named twice")));
            }
        }
        let mut out = format!("filespaceOrder={}\n", self.filespace_order.join(":"));
        let mut keys = std::collections::BTreeSet::new();
        for m in &self.mirrors {
            let name = m.name();
            if !keys.insert(m.key) {
                return Err(bad(&name, "the key is used twice".into()));
            }
            if m.address.is_empty() || m.address.contains(['[', ']']) || m.address.chars().any(forbidden) {
                return Err(bad(
                    &name,
                    format!("address {:?} is empty or holds a bracket, space or control character", m.address),
                ));
            }
            for (what, port) in [
                ("port", m.port),
                ("mirror replication port", m.mirror_replication_port),
                ("primary replication port", m.primary_replication_port),
            ] {
                if port == 0 {
                    return Err(bad(&name, format!("the {what} is 0")));
                }
            }
            if m.locations.len() != self.filespace_order.len() + 1 {
                return Err(bad(
                    &name,
                    format!("{} locations for {} filespaces", m.locations.len(), self.filespace_order.len() + 1),
                ));
            }
            let address = if m.address.contains(':') { format!("[{}]", m.address) } else { m.address.clone() };
            out.push_str(&format!(
                "{name}={}:{address}:{}:{}:{}",
                m.content, m.port, m.mirror_replication_port, m.primary_replication_port
            ));
            for l in &m.locations {
                let s = l.to_str().ok_or_else(|| bad(&name, format!("location {l:?} is not UTF-8")))?;
                if s.is_empty() || s.contains(':') || s.chars().any(forbidden) {
                    return Err(bad(
                        &name,
                        format!("location {s:?} is empty or holds a ':', space or control character"),
                    ));
                }
                out.push(':');
                out.push_str(s);
            }
            out.push('\n');
        }
        Ok(out)
    }
}

enum BadNumber {
    Empty,
    NotDigits,
    OutOfRange,
}

fn number(text: &str, min: u64, max: u64) -> Result<u64, BadNumber> {
    if text.is_empty() {
        Err(BadNumber::Empty)
    } else if !text.bytes().all(|b| b.is_ascii_digit()) {
        Err(BadNumber::NotDigits)
    } else {
        // All digits: only too many of them fails to parse.
        match text.parse::<u64>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(BadNumber::OutOfRange),
        }
    }
}

impl Parser {
    /// Parse one line that is not blank or a comment; `start..end` is its
    /// text without the surrounding spaces.
    fn line(&mut self, l: &Line<'_>, start: usize, end: usize) -> Result<(), ParseError> {
        use ParseErrorKind::*;
        let body = &l.raw[start..end];
        let wide: Vec<(usize, char)> =
            body.char_indices().filter(|&(_, c)| fullwidth_name(c).is_some()).map(|(i, c)| (start + i, c)).collect();
        if let Some(&(at, c)) = wide.first() {
            let columns: Vec<String> = wide.iter().map(|&(i, _)| column(l.raw, i).to_string()).collect();
            let more = if wide.len() > 1 {
                format!(" (fullwidth characters at columns {})", columns.join(", "))
            } else {
                String::new()
            };
            let ascii = match c {
                '\u{ff1a}' => "the ASCII colon \":\"",
                '\u{ff1d}' => "the ASCII \"=\"",
                '\u{3000}' => "nothing (fields hold no spaces)",
                _ => "ASCII digits 0-9",
            };
            return Err(l.err(
                at,
                Fullwidth,
                format!(
                    "{}, typed by an input method, where ASCII is expected{more}",
                    fullwidth_name(c).unwrap_or("fullwidth character")
                ),
                format!("replace it with {ascii}: switch the input method to half-width (English) and retype it"),
            ));
        }
        if let Some(i) = body.find('\u{feff}') {
            return Err(l.err(
                start + i,
                ByteOrderMark,
                "a byte-order mark (U+FEFF, bytes EF BB BF) inside the file, where only its very start may hold one (were two files joined?)".into(),
                "remove it: most editors show it as nothing, so delete the character before the line's first visible one, or save the file as UTF-8 without BOM".into(),
            ));
        }
        if let Some((i, c)) = body.char_indices().find(|&(_, c)| c.is_whitespace() || c.is_control()) {
            let at = start + i;
            if c == '\r' {
                return Err(l.err(
                    at,
                    LineEnding,
                    "a carriage return (CR, U+000D) inside the line: the file ends its lines with CR alone (an old Mac format), or holds a stray CR".into(),
                    "save it with LF line endings (for example: tr '\\r' '\\n' < FILE > FILE.new)".into(),
                ));
            }
            if c == '\t' {
                return Err(l.err(
                    at,
                    Whitespace,
                    "a tab inside the line".into(),
                    "fields are separated by ':' and hold no tabs: if it stands between two fields, put ':' in its place; otherwise remove it".into(),
                ));
            }
            if c.is_whitespace() {
                let rest = body[i..].trim_start();
                let what =
                    if c == ' ' { "a space".to_string() } else { format!("the space character U+{:04X}", c as u32) };
                if rest.starts_with('#') {
                    return Err(l.err(
                        end - rest.len(),
                        TrailingText,
                        format!("unexpected text {} after the line's last field", q(rest)),
                        "remove it; a comment goes on a line of its own, starting with #".into(),
                    ));
                }
                if !rest.contains([':', '=']) {
                    return Err(l.err(
                        end - rest.len(),
                        TrailingText,
                        format!("unexpected text {} after {what}", q(rest)),
                        "if it is another field, put ':' in place of the space; if it is a comment, it goes on a line of its own, starting with #".into(),
                    ));
                }
                return Err(l.err(
                    at,
                    Whitespace,
                    format!("{what} inside the line"),
                    "fields hold no spaces and nothing goes around ':' or '=': if it stands between two fields, put ':' in its place; otherwise remove it".into(),
                ));
            }
            return Err(l.err(
                at,
                ControlCharacter,
                format!("control character U+{:04X}", c as u32),
                "remove it (the file is plain text, one entry per line)".into(),
            ));
        }
        let Some(eq) = body.find('=').map(|i| start + i) else {
            return Err(l.err(
                start,
                NoEquals,
                format!("{} has no '='", q(body)),
                format!("lines read filespaceOrder=... (first) or {LINE_SYNTAX}"),
            ));
        };
        let key = &l.raw[start..eq];
        if key == "filespaceOrder" {
            return self.filespace_order(l, start, eq, end);
        }
        let Some(digits) = key.strip_prefix("mirror") else {
            let hint = if key.eq_ignore_ascii_case("filespaceOrder") {
                " (the key is spelled filespaceOrder, with a capital O)".to_string()
            } else if key.to_ascii_lowercase().starts_with("mirror") {
                " (mirror lines start with lower-case mirror<N>)".to_string()
            } else {
                String::new()
            };
            return Err(l.err(
                start,
                UnknownKey,
                format!("unknown key {}{hint}", q(key)),
                format!("the keys are filespaceOrder (first line) and mirror<N>; lines read {LINE_SYNTAX}"),
            ));
        };
        let key_n =
            match number(digits, 0, u64::from(u32::MAX)) {
                Ok(n) => n as u32,
                Err(_) => return Err(l.err(
                    start,
                    BadKey,
                    format!("key {} is not mirror followed by a number", q(key)),
                    "name the line mirror<N>, N a number unique in the file (by convention the content: mirror0=0:...)"
                        .into(),
                )),
            };
        let (m, origin) = self.mirror(l, key, key_n, start, eq, end)?;
        if let Some(first) = self.keys.get(&key_n) {
            return Err(l.err(
                start,
                DuplicateKey,
                format!("duplicate key {key} (first on line {first})"),
                "give each mirror line its own number (by convention its content)".into(),
            ));
        }
        self.keys.insert(key_n, l.number);
        self.config.mirrors.push(m);
        self.origin.lines.push(origin);
        Ok(())
    }

    fn filespace_order(&mut self, l: &Line<'_>, start: usize, eq: usize, end: usize) -> Result<(), ParseError> {
        use ParseErrorKind::*;
        if self.order_seen {
            return Err(l.err(
                start,
                MisplacedFilespaceOrder,
                format!("a second filespaceOrder= line (the first is on line {})", self.origin.filespace_order_line),
                "keep one, as the first line that is not blank or a comment".into(),
            ));
        }
        self.order_seen = true;
        let misplaced = self.first.is_some_and(|(line, _)| line != l.number);
        let mut names = Vec::new();
        let mut columns = Vec::new();
        if eq + 1 < end {
            let mut at = eq + 1;
            for name in l.raw[eq + 1..end].split(':') {
                if !valid_filespace_name(name) {
                    return Err(l.err(
                        at,
                        BadFilespaceName,
                        if name.is_empty() {
                            "empty filespace name".to_string()
                        } else {
                            format!("filespace name {} is not 1 to 64 letters, digits, '_', '-' or '.'", q(name))
                        },
                        "list the filespaces other than the default one, separated by ':' with none empty (nothing after = when there are none)".into(),
                    ));
                }
                if names.contains(&name.to_string()) {
                    return Err(l.err(
                        at,
                        DuplicateFilespace,
                        format!("filespace {name} is named twice"),
                        "name each filespace once".into(),
                    ));
                }
                names.push(name.to_string());
                columns.push(column(l.raw, at));
                at += name.len() + 1;
            }
        }
        self.config.filespace_order = names;
        self.origin.filespace_order_line = l.number;
        self.origin.filespace_order_columns = columns;
        self.origin.filespace_order_end = column(l.raw, end);
        if misplaced {
            let first = self.first.map_or(0, |(line, _)| line);
            return Err(l.err(
                start,
                MisplacedFilespaceOrder,
                format!("filespaceOrder= must be the first line that is not blank or a comment, but line {first} comes before it"),
                "move it to the top".into(),
            ));
        }
        Ok(())
    }

    /// Split a mirror line's value into fields: `(byte offset, text)`. The
    /// address (the second field) may be bracketed for IPv6; the text is
    /// then inside the brackets and the offset is that of `[`.
    fn fields<'a>(l: &Line<'a>, name: &str, eq: usize, end: usize) -> Result<Vec<(usize, &'a str)>, ParseError> {
        let raw = l.raw;
        let mut fields = Vec::new();
        let mut i = eq + 1;
        loop {
            if fields.len() == 1 && raw[i..end].starts_with('[') {
                let Some(close) = raw[i..end].find(']').map(|k| i + k) else {
                    return Err(l.err(
                        i,
                        ParseErrorKind::BadAddress,
                        format!("the address of {name} opens '[' but never closes it"),
                        "write an IPv6 address as [address], e.g. [::1]".into(),
                    ));
                };
                fields.push((i, &raw[i + 1..close]));
                if close + 1 == end {
                    return Ok(fields);
                }
                if !raw[close + 1..end].starts_with(':') {
                    return Err(l.err(
                        close + 1,
                        ParseErrorKind::BadAddress,
                        format!("unexpected text after the bracketed address of {name}"),
                        "put ':' right after ']'".into(),
                    ));
                }
                i = close + 2;
            } else {
                match raw[i..end].find(':') {
                    Some(k) => {
                        fields.push((i, &raw[i..i + k]));
                        i += k + 1;
                    }
                    None => {
                        fields.push((i, &raw[i..end]));
                        return Ok(fields);
                    }
                }
            }
        }
    }

    fn mirror(
        &self,
        l: &Line<'_>,
        name: &str,
        key: u32,
        start: usize,
        eq: usize,
        end: usize,
    ) -> Result<(MirrorLine, LineOrigin), ParseError> {
        use ParseErrorKind::*;
        let fields = Self::fields(l, name, eq, end)?;
        if let Some(&(at, _)) = fields.get(1).filter(|(at, _)| !l.raw[*at..].starts_with('[')) {
            if let Some(a) = unbracketed_ipv6(&l.raw[at..end]) {
                return Err(l.err(
                    at,
                    BadAddress,
                    format!("the address of {name} looks like an IPv6 address written without brackets ({}): its ':' read as field separators", q(&a)),
                    format!("write it in brackets: [{}]", super::elide(&a)),
                ));
            }
        }
        if fields.len() < FIELDS.len() {
            let missing = FIELDS[fields.len()];
            let after = if fields.len() == 1 && fields[0].1.is_empty() {
                "has no value".to_string()
            } else {
                format!("ends after its {} field", FIELDS[fields.len() - 1])
            };
            return Err(l.err(
                end,
                MissingField,
                format!("{name} {after}: the {missing} is missing"),
                format!("lines read {LINE_SYNTAX}; add the {missing}"),
            ));
        }
        let content = match number(fields[0].1, 0, u64::from(u32::MAX)) {
            Ok(v) => v as u32,
            Err(e) => return Err(Self::number_error(l, name, "content", fields[0], e, "a content id: 0, 1, 2, ...")),
        };
        let (address_at, address) = fields[1];
        if address.is_empty() {
            return Err(l.err(
                address_at,
                EmptyField,
                format!("the address of {name} is empty"),
                "give the host name or address the mirror is reached at".into(),
            ));
        }
        if address.len() > 253 {
            return Err(l.err(
                address_at,
                TooLong,
                format!(
                    "the address of {name} is {} characters long ({}); a host name holds at most 253",
                    address.chars().count(),
                    q(address)
                ),
                "give the host name or address the mirror is reached at".into(),
            ));
        }
        if address.contains(['[', ']']) {
            return Err(l.err(
                address_at,
                BadAddress,
                format!("address {} of {name} holds a stray bracket", q(address)),
                "write a host name, an IPv4 address, or an IPv6 address in brackets ([::1])".into(),
            ));
        }
        let mut ports = [0u16; 3];
        for (k, port) in ports.iter_mut().enumerate() {
            let field = fields[2 + k];
            match number(field.1, 1, 65535) {
                Ok(v) => *port = v as u16,
                Err(e) => return Err(Self::number_error(l, name, FIELDS[2 + k], field, e, "1-65535")),
            }
        }
        let locations = &fields[5..];
        let fs = &self.config.filespace_order;
        let need = fs.len() + 1;
        let fs_name =
            |i: usize| if i == 0 { "the default filespace".to_string() } else { format!("filespace {}", fs[i - 1]) };
        for (i, &(at, text)) in locations.iter().enumerate() {
            if self.order_seen && i >= need {
                let which = if fs.is_empty() {
                    String::from("0 filespaces")
                } else {
                    format!("{} filespace(s) ({})", fs.len(), fs.join(", "))
                };
                return Err(l.err(
                    at,
                    TrailingText,
                    format!("unexpected field {} after the last location of {name}: filespaceOrder names {which}, so a line has {need} location(s), the default filespace's first", q(text)),
                    "remove it, or name its filespace in filespaceOrder".into(),
                ));
            }
            let long_name = text.split('/').map(str::len).max().unwrap_or(0);
            if text.len() > MAX_PATH || long_name > MAX_NAME {
                let what = if text.len() > MAX_PATH {
                    format!("{} bytes long; a path holds at most {MAX_PATH}", text.len())
                } else {
                    format!("holds a name of {long_name} bytes; a name in a path holds at most {MAX_NAME}")
                };
                return Err(l.err(
                    at,
                    TooLong,
                    format!("location {} of {name} ({}) is {what}", i + 1, q(text)),
                    "give a shorter path".into(),
                ));
            }
            if text.is_empty() {
                let whose = if self.order_seen { format!(" (for {})", fs_name(i)) } else { String::new() };
                return Err(l.err(
                    at,
                    EmptyLocation,
                    format!("location {} of {name}{whose} is empty", i + 1),
                    "give the mirror's directory, e.g. /data/mirror/gpseg0, and no ':' at the end of the line".into(),
                ));
            }
        }
        if self.order_seen && locations.len() < need {
            return Err(l.err(
                end,
                MissingField,
                format!(
                    "{name} has {} location(s) but {need} are needed: the default filespace's, then one for each of filespaceOrder ({})",
                    locations.len(),
                    fs.join(", ")
                ),
                format!("add the location for {}", fs_name(locations.len())),
            ));
        }
        let mirror = MirrorLine {
            key,
            content,
            address: address.to_string(),
            port: ports[0],
            mirror_replication_port: ports[1],
            primary_replication_port: ports[2],
            locations: locations.iter().map(|&(_, t)| PathBuf::from(t)).collect(),
        };
        let col = |at| column(l.raw, at);
        let origin = LineOrigin {
            line: l.number,
            key: col(start),
            content: col(fields[0].0),
            address: col(address_at),
            port: col(fields[2].0),
            mirror_replication_port: col(fields[3].0),
            primary_replication_port: col(fields[4].0),
            locations: locations.iter().map(|&(at, _)| col(at)).collect(),
            end: col(end),
        };
        Ok((mirror, origin))
    }

    fn number_error(
        l: &Line<'_>,
        name: &str,
        field: &str,
        (at, text): (usize, &str),
        e: BadNumber,
        range: &str,
    ) -> ParseError {
        use ParseErrorKind::*;
        let fix = format!("fix the {field} field of {name}");
        match e {
            BadNumber::Empty => l.err(at, EmptyField, format!("the {field} of {name} is empty ({range})"), fix),
            BadNumber::NotDigits => {
                l.err(at, NotANumber, format!("{field} {} is not a number ({range})", q(text)), fix)
            }
            BadNumber::OutOfRange => l.err(at, OutOfRange, format!("{field} {text} is out of range ({range})"), fix),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ParseErrorKind::*;

    /// The sample of the `gpaddmirrors` documentation, verbatim (it is
    /// indented in the document, and ends with an indented blank line).
    const SEED_SAMPLE: &str = "    filespaceOrder=
    mirror0=0:sdw1-1:52001:53001:54001:/gpdata/mir1/gp0
    mirror1=1:sdw1-2:52002:53002:54002:/gpdata/mir1/gp1
    mirror2=2:sdw2-1:52001:53001:54001:/gpdata/mir1/gp2
    mirror3=3:sdw2-2:52002:53002:54002:/gpdata/mir1/gp3
    
";

    /// The second sample (a blog's), typed with a Chinese input method.
    const SEED_FULLWIDTH: &str = "filespaceOrder=
mirror0=0:sdw2：50000：51000：52000：/data/mirror/gpseg0
mirror1=1:sdw1：50000：51000：52000：/data/mirror/gpseg1
";

    fn line(key: u32, content: u32, address: &str, ports: [u16; 3], locations: &[&str]) -> MirrorLine {
        MirrorLine {
            key,
            content,
            address: address.into(),
            port: ports[0],
            mirror_replication_port: ports[1],
            primary_replication_port: ports[2],
            locations: locations.iter().map(PathBuf::from).collect(),
        }
    }

    /// The one error of a text that must have exactly one.
    fn one_error(text: &str) -> ParseError {
        let mut e = MirrorConfig::parse(text, "mirrors.cfg").expect_err("the text must be refused").0;
        assert_eq!(e.len(), 1, "{e:?}");
        e.remove(0)
    }

    fn assert_at(e: &ParseError, kind: ParseErrorKind, line: usize, column: usize) {
        assert_eq!((e.kind, e.line, e.column), (kind, line, column), "{e}");
        assert!(e.to_string().starts_with(&format!("mirrors.cfg:{line}:{column}: ")), "{e}");
    }

    #[test]
    fn the_seed_sample_parses_exactly() {
        let c = MirrorConfig::parse(SEED_SAMPLE, "seed.cfg").unwrap();
        assert!(c.filespace_order.is_empty());
        assert_eq!(
            c.mirrors,
            vec![
                line(0, 0, "sdw1-1", [52001, 53001, 54001], &["/gpdata/mir1/gp0"]),
                line(1, 1, "sdw1-2", [52002, 53002, 54002], &["/gpdata/mir1/gp1"]),
                line(2, 2, "sdw2-1", [52001, 53001, 54001], &["/gpdata/mir1/gp2"]),
                line(3, 3, "sdw2-2", [52002, 53002, 54002], &["/gpdata/mir1/gp3"]),
            ]
        );
        let o = c.origin.as_ref().unwrap();
        assert_eq!((o.file.as_str(), o.filespace_order_line), ("seed.cfg", 1));
        assert_eq!(o.lines.len(), 4);
        let l = &o.lines[1];
        // "    mirror1=1:sdw1-2:52002:53002:54002:/gpdata/mir1/gp1"
        assert_eq!((l.line, l.key, l.content, l.address, l.port), (3, 5, 13, 15, 22));
        assert_eq!((l.mirror_replication_port, l.primary_replication_port, l.locations.clone()), (28, 34, vec![40]));
        // Written back the way the seed writes it, without the indentation.
        let text = c.format().unwrap();
        let unindented: String =
            SEED_SAMPLE.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| format!("{l}\n")).collect();
        assert_eq!(text, unindented);
    }

    #[test]
    fn format_then_parse_round_trips() {
        let c = MirrorConfig {
            filespace_order: vec!["fast_fs".into(), "archive".into()],
            mirrors: vec![
                line(0, 0, "sdw2", [41000, 42000, 43000], &["/m/gpseg0", "/fast/m/gpseg0", "/arch/m/gpseg0"]),
                line(7, 1, "fe80::1", [41001, 42001, 43001], &["/m/gpseg1", "/fast/m/gpseg1", "/arch/m/gpseg1"]),
            ],
            origin: None,
        };
        let text = c.format().unwrap();
        assert!(text.starts_with("filespaceOrder=fast_fs:archive\nmirror0=0:sdw2:41000:"), "{text}");
        assert!(
            text.contains("mirror7=1:[fe80::1]:41001:42001:43001:/m/gpseg1:/fast/m/gpseg1:/arch/m/gpseg1\n"),
            "{text}"
        );
        let back = MirrorConfig::parse(&text, "out.cfg").unwrap();
        assert_eq!((&back.filespace_order, &back.mirrors), (&c.filespace_order, &c.mirrors));
        assert_eq!(back.format().unwrap(), text);
    }

    #[test]
    fn format_refuses_what_it_cannot_write() {
        let mut c = MirrorConfig {
            filespace_order: vec![],
            mirrors: vec![line(0, 0, "sdw2", [41000, 42000, 43000], &["/m/a:b"])],
            origin: None,
        };
        let e = c.format().unwrap_err();
        assert!(matches!(&e, LayoutError::Unrepresentable { mirror, .. } if mirror == "mirror0"), "{e}");
        c.mirrors[0].locations = vec!["/m/a b".into()];
        assert!(c.format().is_err());
        c.mirrors[0].locations = vec!["/m/a".into(), "/m/b".into()];
        assert!(c.format().unwrap_err().to_string().contains("2 locations for 1 filespaces"));
        c.mirrors[0].locations = vec!["/m/a".into()];
        c.mirrors[0].address = "sdw 2".into();
        assert!(c.format().is_err());
        c.mirrors[0].address = "sdw2".into();
        c.mirrors[0].port = 0;
        assert!(c.format().unwrap_err().to_string().contains("port is 0"));
        c.mirrors[0].port = 1;
        c.mirrors.push(c.mirrors[0].clone());
        assert!(c.format().unwrap_err().to_string().contains("used twice"));
        c.mirrors.pop();
        c.filespace_order = vec!["a b".into()];
        c.mirrors[0].locations.push("/m/b".into());
        assert!(c.format().is_err());
        c.filespace_order = vec!["fs1".into()];
        assert!(c.format().is_ok());
    }

    #[test]
    fn blank_lines_comments_and_crlf_are_accepted() {
        let text = "\u{feff}# mirrors for the test cluster\r\n\r\n  filespaceOrder=fs1 \r\n# content 0\r\n\tmirror0=0:h2:41000:42000:43000:/m/gpseg0:/fs1/gpseg0\t\r\n";
        let c = MirrorConfig::parse(text, "mirrors.cfg").unwrap();
        assert_eq!(c.filespace_order, vec!["fs1".to_string()]);
        assert_eq!(c.mirrors, vec![line(0, 0, "h2", [41000, 42000, 43000], &["/m/gpseg0", "/fs1/gpseg0"])]);
        let o = c.origin.unwrap();
        assert_eq!(
            (o.filespace_order_line, o.filespace_order_columns.clone(), o.filespace_order_end),
            (3, vec![18], 21)
        );
        assert_eq!((o.lines[0].line, o.lines[0].key, o.lines[0].locations.clone()), (5, 2, vec![33, 43]));
    }

    #[test]
    fn the_fullwidth_colons_of_the_second_seed_sample_are_named_with_their_columns() {
        let e = MirrorConfig::parse(SEED_FULLWIDTH, "mirror_config_file").unwrap_err().0;
        assert_eq!(e.len(), 2, "one error per line: {e:?}");
        // "mirror0=0:sdw2" is 14 characters: the first fullwidth colon is column 15.
        for (i, e) in e.iter().enumerate() {
            assert_eq!((e.kind, e.line, e.column), (Fullwidth, i + 2, 15), "{e}");
            let m = e.to_string();
            assert!(m.starts_with(&format!("mirror_config_file:{}:15: fullwidth colon \"：\" (U+FF1A)", i + 2)), "{m}");
            assert!(m.contains("input method") && m.contains("columns 15, 21, 27, 33"), "{m}");
            assert!(m.contains("ASCII colon"), "{m}");
        }
        // Columns count characters, not bytes: a fullwidth colon is 3 bytes.
        let e = one_error("filespaceOrder=\nmirror0=0:h：1:2:3:/m\n");
        assert_at(&e, Fullwidth, 2, 12);
        assert!(!e.what.contains("columns"), "a single one lists no others: {e}");
        let e = one_error("filespaceOrder=\nmirror0＝0:h:1:2:3:/m\n");
        assert_at(&e, Fullwidth, 2, 8);
        assert!(e.what.contains("fullwidth equals sign"), "{e}");
        let e = one_error("filespaceOrder=\nmirror0=0:h:５２００１:2:3:/m\n");
        assert_at(&e, Fullwidth, 2, 13);
        assert!(e.what.contains("fullwidth digit"), "{e}");
    }

    #[test]
    fn bad_ports_name_the_field_and_the_mirror() {
        let e =
            one_error("filespaceOrder=\nmirror0=0:h1:41000:42000:43000:/m/0\nmirror1=1:h1:5200x:42001:43001:/m/1\n");
        assert_at(&e, NotANumber, 3, 14);
        assert_eq!(
            e.to_string(),
            "mirrors.cfg:3:14: port \"5200x\" is not a number (1-65535); fix the port field of mirror1"
        );
        let e = one_error("filespaceOrder=\nmirror1=1:h1:41001:70000:43001:/m/1\n");
        assert_at(&e, OutOfRange, 2, 20);
        assert!(e.to_string().contains("mirror replication port 70000 is out of range (1-65535); fix the mirror replication port field of mirror1"), "{e}");
        let e = one_error("filespaceOrder=\nmirror1=1:h1:41001:42001:0:/m/1\n");
        assert_at(&e, OutOfRange, 2, 26);
        assert!(e.what.contains("primary replication port 0 is out of range"), "{e}");
        let e = one_error("filespaceOrder=\nmirror1=1:h1:99999999999999999999999:42001:1:/m/1\n");
        assert_at(&e, OutOfRange, 2, 14);
        let e = one_error("filespaceOrder=\nmirror1=1:h1::42001:1:/m/1\n");
        assert_at(&e, EmptyField, 2, 14);
        assert!(e.what.contains("the port of mirror1 is empty"), "{e}");
        let e = one_error("filespaceOrder=\nmirror1=-1:h1:1:2:3:/m/1\n");
        assert_at(&e, NotANumber, 2, 9);
        assert!(e.what.contains("content \"-1\" is not a number"), "{e}");
    }

    #[test]
    fn missing_fields_say_which_one() {
        let e = one_error("filespaceOrder=\nmirror0=0:h1:41000:42000\n");
        assert_at(&e, MissingField, 2, 25);
        assert!(
            e.what.contains(
                "mirror0 ends after its mirror replication port field: the primary replication port is missing"
            ),
            "{e}"
        );
        let e = one_error("filespaceOrder=\nmirror0=0:h1:41000:42000:43000\n");
        assert_at(&e, MissingField, 2, 31);
        assert!(e.what.contains("the location is missing"), "{e}");
        let e = one_error("filespaceOrder=\nmirror0=\n");
        assert_at(&e, MissingField, 2, 9);
        assert!(e.what.contains("mirror0 has no value"), "{e}");
        // One location short of what filespaceOrder asks for.
        let e = one_error("filespaceOrder=fs1:fs2\nmirror0=0:h1:41000:42000:43000:/m/0:/fs1/0\n");
        assert_at(&e, MissingField, 2, 43);
        assert!(e.what.contains("has 2 location(s) but 3 are needed"), "{e}");
        assert_eq!(e.fix, "add the location for filespace fs2");
    }

    #[test]
    fn trailing_garbage_is_refused_at_its_column() {
        // A field too many: the location count comes from filespaceOrder.
        let e = one_error("filespaceOrder=\nmirror0=0:h1:41000:42000:43000:/m/0:/extra\n");
        assert_at(&e, TrailingText, 2, 37);
        assert!(e.what.contains("unexpected field \"/extra\" after the last location of mirror0"), "{e}");
        assert!(e.what.contains("names 0 filespaces, so a line has 1 location(s)"), "{e}");
        // Text after a space: an attempted trailing comment.
        let e = one_error("filespaceOrder=\nmirror0=0:h1:41000:42000:43000:/m/0   # first one\n");
        assert_at(&e, TrailingText, 2, 39);
        assert!(e.what.contains("unexpected text \"# first one\""), "{e}");
        assert!(e.fix.contains("line of its own"), "{e}");
        // A space inside the line.
        let e = one_error("filespaceOrder=\nmirror0 = 0:h1:41000:42000:43000:/m/0\n");
        assert_at(&e, Whitespace, 2, 8);
        let e = one_error("filespaceOrder=\nmirror0=0:h1:41000:42000:43000:/m/0\u{7}\n");
        assert_at(&e, ControlCharacter, 2, 36);
        // After a bracketed address.
        let e = one_error("filespaceOrder=\nmirror0=0:[::1]x:41000:42000:43000:/m/0\n");
        assert_at(&e, BadAddress, 2, 16);
        let e = one_error("filespaceOrder=\nmirror0=0:[::1:41000:42000:43000:/m/0\n");
        assert_at(&e, BadAddress, 2, 11);
        let e = one_error("filespaceOrder=\nmirror0=0:h]:41000:42000:43000:/m/0\n");
        assert_at(&e, BadAddress, 2, 11);
        let e = one_error("filespaceOrder=\nmirror0=0::41000:42000:43000:/m/0\n");
        assert_at(&e, EmptyField, 2, 11);
    }

    #[test]
    fn duplicate_and_unknown_keys() {
        let text = "filespaceOrder=\nmirror0=0:h2:1:2:3:/m/0\n\nmirror0=1:h1:1:2:3:/m/1\n";
        let e = one_error(text);
        assert_at(&e, DuplicateKey, 4, 1);
        assert!(e.what.contains("duplicate key mirror0 (first on line 2)"), "{e}");
        // Leading zeros name the same key.
        assert_at(
            &one_error("filespaceOrder=\nmirror1=0:h2:1:2:3:/m/0\nmirror01=1:h1:1:2:3:/m/1\n"),
            DuplicateKey,
            3,
            1,
        );
        let e = one_error("filespaceOrder=\nmirorr0=0:h2:1:2:3:/m/0\n");
        assert_at(&e, UnknownKey, 2, 1);
        assert!(e.what.contains("unknown key \"mirorr0\""), "{e}");
        let e = one_error("filespaceOrder=\nMirror0=0:h2:1:2:3:/m/0\n");
        assert!(e.what.contains("lower-case"), "{e}");
        let e = one_error("filespaceOrder=\nmirrorX=0:h2:1:2:3:/m/0\n");
        assert_at(&e, BadKey, 2, 1);
        let e = one_error("filespaceOrder=\n  just some words\n");
        assert_at(&e, TrailingText, 2, 8);
        let e = one_error("filespaceOrder=\nmirror0:0:h2:1:2:3:/m/0\n");
        assert_at(&e, NoEquals, 2, 1);
    }

    #[test]
    fn a_missing_or_misplaced_filespace_order_line() {
        let e = one_error("# no order\nmirror0=0:h2:1:2:3:/m/0\n");
        assert_at(&e, MissingFilespaceOrder, 2, 1);
        assert!(e.what.contains("filespaceOrder= line is missing"), "{e}");
        let e = one_error("mirror0=0:h2:1:2:3:/m/0\nfilespaceOrder=\nmirror1=1:h1:1:2:3:/m/1\n");
        assert_at(&e, MisplacedFilespaceOrder, 2, 1);
        assert!(e.what.contains("line 1 comes before it"), "{e}");
        let e = one_error("filespaceOrder=\nmirror0=0:h2:1:2:3:/m/0\nfilespaceOrder=\n");
        assert_at(&e, MisplacedFilespaceOrder, 3, 1);
        assert!(e.what.contains("second filespaceOrder= line (the first is on line 1)"), "{e}");
        // The misspelt key is unknown, and the real one is then missing: two errors.
        let all = MirrorConfig::parse("filespaceorder=\nmirror0=0:h2:1:2:3:/m/0\n", "mirrors.cfg").unwrap_err().0;
        assert_eq!(all.len(), 2);
        assert_at(&all[0], UnknownKey, 1, 1);
        assert!(all[0].what.contains("capital O"), "{}", all[0]);
        assert_at(&all[1], MissingFilespaceOrder, 1, 1);
        let e = one_error("\n# nothing\n   \n");
        assert_at(&e, Empty, 1, 1);
        let e = one_error("filespaceOrder=fs1::fs2\n");
        assert_at(&e, BadFilespaceName, 1, 20);
        let e = one_error("filespaceOrder=fs1:fs1\n");
        assert_at(&e, DuplicateFilespace, 1, 20);
    }

    #[test]
    fn an_empty_location() {
        let e = one_error("filespaceOrder=fs1\nmirror0=0:h2:1:2:3::/fs1/0\n");
        assert_at(&e, EmptyLocation, 2, 20);
        assert!(e.what.contains("location 1 of mirror0 (for the default filespace) is empty"), "{e}");
        let e = one_error("filespaceOrder=fs1\nmirror0=0:h2:1:2:3:/m/0:\n");
        assert_at(&e, EmptyLocation, 2, 25);
        assert!(e.what.contains("(for filespace fs1)"), "{e}");
    }

    #[test]
    fn every_bad_line_is_reported_in_file_order() {
        let text = "filespaceOrder=\nmirror0=0:h2:x:2:3:/m/0\nmirror1=1:h1:1:2:3:/m/1\nmirror2=2:h1:1:2\nbogus=1\n";
        let e = MirrorConfig::parse(text, "mirrors.cfg").unwrap_err();
        let at: Vec<(usize, ParseErrorKind)> = e.0.iter().map(|e| (e.line, e.kind)).collect();
        assert_eq!(at, vec![(2, NotANumber), (4, MissingField), (5, UnknownKey)]);
        assert_eq!(e.to_string().lines().count(), 3);
    }

    #[test]
    fn messages_that_used_to_mislead() {
        // IPv6 without brackets: named, with the fix.
        let e = one_error("filespaceOrder=\nmirror0=0:::1:41000:42000:43000:/m/0\n");
        assert_at(&e, BadAddress, 2, 11);
        assert!(e.what.contains("IPv6 address written without brackets (\"::1\")") && e.fix.contains("[::1]"), "{e}");
        assert!(!e.to_string().contains("is empty"), "{e}");
        // A tab between two fields: put ':' in its place (not "remove the text").
        let e = one_error("filespaceOrder=\nmirror0=0:h2:41000\t42000:43000:/m/0\n");
        assert_at(&e, Whitespace, 2, 19);
        assert!(e.what == "a tab inside the line" && e.fix.contains("put ':' in its place"), "{e}");
        // A space before another field: the same advice.
        let e = one_error("filespaceOrder=\nmirror0=0:h2:41000:42000:43000:/m/0 /fs/0\n");
        assert_eq!(e.kind, TrailingText, "{e}");
        assert!(e.what.contains("after a space") && e.fix.contains("put ':' in place of the space"), "{e}");
        // A CR alone is a line ending, not "a space or tab".
        let e = one_error("filespaceOrder=\rmirror0=0:h2:41000:42000:43000:/m/0\n");
        assert_at(&e, LineEnding, 1, 16);
        assert!(e.what.contains("carriage return") && !e.what.contains("space or tab"), "{e}");
        // A second BOM (two files joined) is not an unknown key.
        let e = one_error("\u{feff}filespaceOrder=\n\u{feff}mirror0=0:h2:41000:42000:43000:/m/0\n");
        assert_at(&e, ByteOrderMark, 2, 1);
        // A 5,000-character path: said to be too long, the message short, no advice about hosts.
        let long = format!("/{}", "d/".repeat(2500));
        let e = one_error(&format!("filespaceOrder=\nmirror0=0:h2:41000:42000:43000:{long}\n"));
        assert_eq!(e.kind, TooLong, "{e}");
        assert!(
            e.to_string().len() < 400 && !e.to_string().contains("host"),
            "{} characters: {e}",
            e.to_string().len()
        );
        let e = one_error(&format!("filespaceOrder=\nmirror0=0:h2:41000:42000:43000:/m/{}\n", "n".repeat(300)));
        assert!(e.kind == TooLong && e.what.contains("a name of 300 bytes"), "{e}");
        let e = one_error(&format!("filespaceOrder=\nmirror0=0:{}:41000:42000:43000:/m/0\n", "h".repeat(300)));
        assert!(e.kind == TooLong && e.to_string().len() < 400, "{e}");
    }

    #[test]
    fn files_that_are_not_utf8_say_where_and_what_they_seem_to_be() {
        let text = "filespaceOrder=\nmirror0=0:h2:41000:42000:43000:/m/0\n";
        let utf16: Vec<u8> = [0xff, 0xfe].into_iter().chain(text.encode_utf16().flat_map(u16::to_le_bytes)).collect();
        let e = MirrorConfig::parse_bytes(&utf16, "mirrors.cfg").unwrap_err().0;
        assert_eq!(e.len(), 1);
        assert_at(&e[0], Encoding, 1, 1);
        assert!(e[0].what.contains("UTF-16") && e[0].fix.contains("save it as UTF-8"), "{}", e[0]);
        // UTF-16 without a BOM: NUL bytes.
        let bare: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let e = MirrorConfig::parse_bytes(&bare, "mirrors.cfg").unwrap_err().0;
        assert!(e[0].what.contains("NUL bytes"), "{}", e[0]);
        // Latin-1: the line and column of the first byte that is not UTF-8.
        let mut latin1 = b"filespaceOrder=\nmirror0=0:h2:41000:42000:43000:/m/caf".to_vec();
        latin1.extend([0xe9, b'\n']);
        let e = MirrorConfig::parse_bytes(&latin1, "mirrors.cfg").unwrap_err().0;
        assert_at(&e[0], Encoding, 2, 38);
        assert!(e[0].what.contains("0xE9") && e[0].what.contains("Latin-1"), "{}", e[0]);
        assert!(MirrorConfig::parse_bytes(text.as_bytes(), "mirrors.cfg").is_ok());
    }
}

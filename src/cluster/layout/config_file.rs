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
#[path = "config_file_tests.rs"]
mod tests;

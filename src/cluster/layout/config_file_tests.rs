//! Tests of the mirror configuration file's parser.

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
    assert!(text.contains("mirror7=1:[fe80::1]:41001:42001:43001:/m/gpseg1:/fast/m/gpseg1:/arch/m/gpseg1\n"), "{text}");
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
    assert_eq!((o.filespace_order_line, o.filespace_order_columns.clone(), o.filespace_order_end), (3, vec![18], 21));
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
    let e = one_error("filespaceOrder=\nmirror0=0:h1:41000:42000:43000:/m/0\nmirror1=1:h1:5200x:42001:43001:/m/1\n");
    assert_at(&e, NotANumber, 3, 14);
    assert_eq!(
        e.to_string(),
        "mirrors.cfg:3:14: port \"5200x\" is not a number (1-65535); fix the port field of mirror1"
    );
    let e = one_error("filespaceOrder=\nmirror1=1:h1:41001:70000:43001:/m/1\n");
    assert_at(&e, OutOfRange, 2, 20);
    assert!(
        e.to_string().contains(
            "mirror replication port 70000 is out of range (1-65535); fix the mirror replication port field of mirror1"
        ),
        "{e}"
    );
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
        e.what
            .contains("mirror0 ends after its mirror replication port field: the primary replication port is missing"),
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
    assert_at(&one_error("filespaceOrder=\nmirror1=0:h2:1:2:3:/m/0\nmirror01=1:h1:1:2:3:/m/1\n"), DuplicateKey, 3, 1);
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
    assert!(e.to_string().len() < 400 && !e.to_string().contains("host"), "{} characters: {e}", e.to_string().len());
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

//! Sealed state files: the catalog, the cluster file, the segments'
//! configurations and the mirror's state are JSON documents inside a
//! 48-byte header that names what the file is, its format version, the
//! body's length and an xxh3 of the body and of the header itself. Any
//! change to any byte is seen when the file is read, and said as damage.
//! Replaced atomically and durably (temporary file, fsync, rename, fsync
//! of the directory). Format, byte by byte: `docs/catalog.md`, "Sealed
//! files".

use crate::io::disk::{Disk, FsPath};
use crate::protocol::path::RelPath;
use std::path::Path;
use xxhash_rust::xxh3::xxh3_64;

/// The first 8 bytes of every sealed file.
pub const MAGIC: [u8; 8] = *b"FRSEALv1";
/// The header's length; the body follows.
pub const HEADER_LEN: usize = 48;
/// Largest body read (a catalog of 10,000 history entries is about 3 MiB).
pub const MAX_BODY: u64 = 64 << 20;

/// What a sealed file holds (bytes 8..10 of its header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Kind {
    Catalog = 1,
    ClusterFile = 2,
    SegmentConfig = 3,
    MirrorState = 4,
    SegmentRoles = 5,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Catalog => "catalog",
            Kind::ClusterFile => "cluster file",
            Kind::SegmentConfig => "segment configuration",
            Kind::MirrorState => "mirror state",
            Kind::SegmentRoles => "role record",
        }
    }

    fn from_u16(v: u16) -> Option<Kind> {
        [Kind::Catalog, Kind::ClusterFile, Kind::SegmentConfig, Kind::MirrorState, Kind::SegmentRoles]
            .into_iter()
            .find(|k| *k as u16 == v)
    }
}

/// Why a sealed file cannot be read. Every one but [`SealError::Plain`]
/// means the file is damaged (or is not what it should be).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("{len} bytes, shorter than the {HEADER_LEN}-byte header (truncated?)")]
    Short { len: usize },
    /// A JSON document without the header: written by hand, or by an
    /// older filerep.
    #[error("plain JSON without the sealed header (written by hand, or by an older filerep)")]
    Plain,
    #[error("its first bytes are not the sealed header (found {found:02x?})")]
    Magic { found: [u8; 8] },
    #[error("its header checksum does not match (the header was changed)")]
    HeaderChecksum,
    #[error("it is a {found} file, not a {expected} file")]
    Kind { found: String, expected: &'static str },
    #[error("its format version is {found}; this filerep reads {expected}")]
    Version { found: u32, expected: u32 },
    #[error("its header says {declared} bytes of body, the file holds {actual}")]
    Length { declared: u64, actual: u64 },
    #[error("its body checksum does not match (the body was changed)")]
    BodyChecksum,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The sealed form of `body`.
pub fn seal(kind: Kind, version: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + 1);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(kind as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&xxh3_64(body).to_le_bytes());
    out.extend_from_slice(&unix_ms().to_le_bytes());
    let h = xxh3_64(&out[..40]);
    out.extend_from_slice(&h.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// What a sealed file's header says, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sealed<'a> {
    pub body: &'a [u8],
    /// When it was written (ms since the epoch).
    pub written_unix_ms: u64,
}

/// Check a sealed file's bytes and return its body: the header's magic,
/// checksum, kind, version and length, then the body's checksum.
pub fn open(kind: Kind, version: u32, bytes: &[u8]) -> Result<Sealed<'_>, SealError> {
    if !bytes.starts_with(&MAGIC) && serde_json::from_slice::<serde_json::Value>(bytes).is_ok() {
        return Err(SealError::Plain);
    }
    if bytes.len() < HEADER_LEN {
        return Err(SealError::Short { len: bytes.len() });
    }
    let mut found = [0u8; 8];
    found.copy_from_slice(&bytes[..8]);
    if found != MAGIC {
        return Err(SealError::Magic { found });
    }
    if xxh3_64(&bytes[..40]) != u64_at(bytes, 40) {
        return Err(SealError::HeaderChecksum);
    }
    let k = u16_at(bytes, 8);
    if k != kind as u16 {
        let found = Kind::from_u16(k).map_or_else(|| format!("kind-{k}"), |k| k.name().to_string());
        return Err(SealError::Kind { found, expected: kind.name() });
    }
    let v = u32_at(bytes, 12);
    if v != version || u16_at(bytes, 10) != 0 {
        return Err(SealError::Version { found: v, expected: version });
    }
    let declared = u64_at(bytes, 16);
    let actual = (bytes.len() - HEADER_LEN) as u64;
    if declared != actual || declared > MAX_BODY {
        return Err(SealError::Length { declared, actual });
    }
    let body = &bytes[HEADER_LEN..];
    if xxh3_64(body) != u64_at(bytes, 24) {
        return Err(SealError::BodyChecksum);
    }
    Ok(Sealed { body, written_unix_ms: u64_at(bytes, 32) })
}

/// Whether `bytes` look like a JSON document rather than a sealed file (a
/// hand-written file, maybe with a mistake in it).
pub fn looks_like_json(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// The JSON body of a file that may be sealed or written by hand: a sealed
/// one must be whole; anything else that starts like JSON is taken as
/// written (its JSON errors are then the reader's to report).
pub fn body_or_plain(kind: Kind, version: u32, bytes: &[u8]) -> Result<&[u8], SealError> {
    match open(kind, version, bytes) {
        Ok(s) => Ok(s.body),
        Err(SealError::Plain) => Ok(bytes),
        Err(SealError::Magic { .. }) if looks_like_json(bytes) => Ok(bytes),
        Err(e) => Err(e),
    }
}

/// An optional state file (absent: `None`), sealed, or plain JSON where
/// `plain_ok` (an older filerep's). Damage is [`crate::Error::Damaged`],
/// naming `what` and the way to `restore` it.
pub fn read_state<T: serde::de::DeserializeOwned>(
    path: &Path,
    kind: Kind,
    version: u32,
    plain_ok: bool,
    restore: &str,
) -> crate::Result<Option<T>> {
    let bytes = super::files::read_file(path)?;
    state_from(bytes, path, kind, version, plain_ok, restore)
}

/// [`read_state`] through any disk (`shown` names the file in messages).
pub fn read_state_on<T: serde::de::DeserializeOwned>(
    disk: &dyn Disk,
    path: &FsPath,
    shown: &Path,
    kind: Kind,
    version: u32,
    plain_ok: bool,
    restore: &str,
) -> crate::Result<Option<T>> {
    let bytes = super::files::read(disk, path)
        .map_err(|e| crate::Error::io(format!("reading {}", shown.display()), std::io::Error::other(e)))?;
    state_from(bytes, shown, kind, version, plain_ok, restore)
}

fn state_from<T: serde::de::DeserializeOwned>(
    bytes: Option<Vec<u8>>,
    shown: &Path,
    kind: Kind,
    version: u32,
    plain_ok: bool,
    restore: &str,
) -> crate::Result<Option<T>> {
    let Some(bytes) = bytes else { return Ok(None) };
    let damaged = |reason: String| crate::Error::Damaged {
        what: kind.name(),
        path: shown.display().to_string(),
        reason,
        restore: restore.to_string(),
    };
    let body = match plain_ok {
        true => body_or_plain(kind, version, &bytes),
        false => open(kind, version, &bytes).map(|s| s.body),
    }
    .map_err(|e| damaged(e.to_string()))?;
    serde_json::from_slice(body).map(Some).map_err(|e| damaged(format!("its JSON does not read: {e}")))
}

/// Replace `path` with `bytes`, atomically and durably: a temporary file
/// beside it, fdatasync, rename over it, fsync of the directory
/// ([`super::files::replace`]).
pub fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    super::files::replace_file(path, bytes).map_err(std::io::Error::other)
}

/// [`replace`] through any disk.
pub fn replace_on(disk: &dyn Disk, path: &FsPath, bytes: &[u8]) -> std::io::Result<()> {
    super::files::replace(disk, path, bytes).map(drop).map_err(std::io::Error::other)
}

/// The last good copy of a sealed file `X`: `X.good`, beside it.
pub fn good_copy(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".good");
    path.with_file_name(name)
}

/// Write a sealed file and its last good copy: the copy first, then the
/// file, so that at every instant one of them is whole and current or
/// the previous version (a reader takes the file; the copy is what
/// `filerep catalog restore` falls back on).
pub fn store_with_copy(path: &Path, kind: Kind, version: u32, body: &[u8]) -> std::io::Result<()> {
    let bytes = seal(kind, version, body);
    replace(&good_copy(path), &bytes)?;
    replace(path, &bytes)
}

/// [`store_with_copy`] through any disk.
pub fn store_with_copy_on(
    disk: &dyn Disk,
    path: &FsPath,
    kind: Kind,
    version: u32,
    body: &[u8],
) -> std::io::Result<()> {
    let bytes = seal(kind, version, body);
    let copy = RelPath::new(&format!("{}.good", path.path.as_str())).map_err(std::io::Error::other)?;
    replace_on(disk, &FsPath::new(path.filespace, copy), &bytes)?;
    replace_on(disk, path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"cluster_id": 250, "pairs": [{"content": 0, "control": "10.0.0.1:7002"}]}"#;

    #[test]
    fn a_sealed_body_round_trips_and_names_its_kind_and_version() {
        let bytes = seal(Kind::Catalog, 2, BODY);
        assert_eq!(&bytes[..8], b"FRSEALv1");
        assert_eq!(bytes.len(), HEADER_LEN + BODY.len());
        let s = open(Kind::Catalog, 2, &bytes).unwrap();
        assert_eq!(s.body, BODY);
        assert!(s.written_unix_ms > 1_600_000_000_000);
        assert_eq!(
            open(Kind::ClusterFile, 2, &bytes),
            Err(SealError::Kind { found: "catalog".into(), expected: "cluster file" })
        );
        assert_eq!(open(Kind::Catalog, 3, &bytes), Err(SealError::Version { found: 2, expected: 3 }));
        assert_eq!(open(Kind::Catalog, 2, BODY), Err(SealError::Plain));
        assert_eq!(open(Kind::Catalog, 2, &bytes[..20]), Err(SealError::Short { len: 20 }));
        let mut longer = bytes.clone();
        longer.push(b'\n');
        assert!(matches!(open(Kind::Catalog, 2, &longer), Err(SealError::Length { .. })));
        assert!(matches!(open(Kind::Catalog, 2, &bytes[..bytes.len() - 1]), Err(SealError::Length { .. })));
    }

    #[test]
    fn every_change_of_every_byte_is_seen() {
        let bytes = seal(Kind::Catalog, 2, BODY);
        let mut damaged = bytes.clone();
        for at in 0..bytes.len() {
            for v in 0..=255u8 {
                if v == bytes[at] {
                    continue;
                }
                damaged[at] = v;
                assert!(open(Kind::Catalog, 2, &damaged).is_err(), "byte {at} set to {v:#04x} went unseen");
            }
            damaged[at] = bytes[at];
        }
    }
}

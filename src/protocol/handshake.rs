//! The v1 handshake: four messages before any frame.
//!
//! 1. primary → mirror `Hello`: identity of the stream (cluster, content,
//!    generation, block size, filespaces, first sequence number) and a nonce.
//! 2. mirror → primary `Challenge`: the mirror's nonce.
//! 3. primary → mirror `Proof`: keyed BLAKE3 of the transcript under the cluster key.
//! 4. mirror → primary `Verdict`: accepted or refused with a reason; when
//!    accepted it carries the mirror's own proof, which the primary checks.
//!
//! The key never crosses the wire; both sides prove they hold it over fresh
//! nonces from both ends, so a recorded handshake cannot be replayed. Each
//! message is a u32 length, the fields, then the xxh3 of the fields.

use xxhash_rust::xxh3::xxh3_64;

pub const MAGIC: [u8; 4] = *b"FRP1";
/// The magic of a NetCheckHello (docs/protocol.md § 14): a connection that
/// measures the network, not a stream.
pub const NET_CHECK_MAGIC: [u8; 4] = *b"FRPN";
/// The most bytes one network check may send (64 GiB).
pub const MAX_NET_CHECK_BYTES: u64 = 64 << 30;
pub const VERSION: u16 = 1;
pub const MAX_MESSAGE: usize = 8 * 1024;
pub const MAX_FILESPACES: usize = 64;
pub const MAX_FILESPACE_NAME: usize = 64;
pub const MAX_REASON: usize = 1024;
/// A Challenge's length `L` (magic, version, nonce, checksum). A Verdict
/// is at least [`VERDICT_MIN_LEN`]: that is how a primary tells an early
/// refusal from a Challenge.
pub const CHALLENGE_LEN: usize = 46;
/// The shortest Verdict's length `L` (no reason).
pub const VERDICT_MIN_LEN: usize = 58;
const KEY_CONTEXT: &str = "filerep cluster key v1";

/// The cluster's shared secret, derived from the key file's contents.
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// Derive the key from key material (a key file's bytes, trimmed of white space).
    pub fn from_material(material: &[u8]) -> Result<ClusterKey, HandshakeError> {
        let trimmed = trim_ascii(material);
        if trimmed.len() < 16 {
            return Err(HandshakeError::Malformed(format!(
                "key material is {} bytes; at least 16 are required",
                trimmed.len()
            )));
        }
        Ok(ClusterKey(blake3::derive_key(KEY_CONTEXT, trimmed)))
    }

    /// The derived 32-byte key: for test vectors (docs/protocol-vectors.md)
    /// and nothing else. Never log it.
    pub fn derived_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn from_file(path: &std::path::Path) -> Result<ClusterKey, HandshakeError> {
        let key_file = |why: String| HandshakeError::KeyFile { path: path.display().to_string(), why };
        let bytes = std::fs::read(path).map_err(|e| key_file(format!("cannot be read: {e}")))?;
        Self::from_material(&bytes).map_err(|e| match e {
            HandshakeError::Malformed(why) => key_file(why),
            other => key_file(other.to_string()),
        })
    }

    fn mac(&self, label: &[u8], hello: &[u8], client_nonce: &[u8; 32], server_nonce: &[u8; 32]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(label);
        h.update(&(hello.len() as u64).to_le_bytes());
        h.update(hello);
        h.update(client_nonce);
        h.update(server_nonce);
        *h.finalize().as_bytes()
    }

    /// A MAC for the control channel: `label` keeps request and response
    /// MACs apart; `nonce` binds it to one connection (no replay).
    pub fn control_mac(&self, label: &[u8], nonce: &[u8; 32], body: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(b"filerep v1 control ");
        h.update(label);
        h.update(nonce);
        h.update(&(body.len() as u64).to_le_bytes());
        h.update(body);
        *h.finalize().as_bytes()
    }

    /// The primary's proof over the transcript.
    pub fn primary_proof(&self, hello: &[u8], cn: &[u8; 32], sn: &[u8; 32]) -> [u8; 32] {
        self.mac(b"filerep v1 primary proof", hello, cn, sn)
    }

    /// The mirror's proof over the transcript (a different label: a proof
    /// cannot be reflected back to its sender).
    pub fn mirror_proof(&self, hello: &[u8], cn: &[u8; 32], sn: &[u8; 32]) -> [u8; 32] {
        self.mac(b"filerep v1 mirror proof", hello, cn, sn)
    }

    /// A network check's proofs (§ 14): labels of their own, so neither can
    /// stand in for a stream's proof.
    pub fn net_check_proof(&self, hello: &[u8], cn: &[u8; 32], sn: &[u8; 32]) -> [u8; 32] {
        self.mac(b"filerep v1 net check proof", hello, cn, sn)
    }

    pub fn net_check_mirror_proof(&self, hello: &[u8], cn: &[u8; 32], sn: &[u8; 32]) -> [u8; 32] {
        self.mac(b"filerep v1 net check mirror proof", hello, cn, sn)
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &b[start..end]
}

/// Constant-time comparison of two proofs.
pub fn proofs_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("malformed handshake: {0}")]
    Malformed(String),
    /// The cluster key file is missing, unreadable or unusable (not a
    /// handshake's fault: said apart so the message points at the file).
    #[error("key file {path}: {why}")]
    KeyFile { path: String, why: String },
    #[error("handshake checksum mismatch")]
    Checksum,
    #[error("bad magic {0:02x?}: the peer does not speak filerep")]
    Magic([u8; 4]),
    #[error("protocol version {0} is not supported (this side speaks {VERSION})")]
    Version(u16),
}

/// Why a mirror refused a primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Status {
    Accepted = 0,
    BadKey = 1,
    WrongCluster = 2,
    WrongContent = 3,
    WrongBlockSize = 4,
    StaleGeneration = 5,
    FilespaceMismatch = 6,
    Busy = 7,
    Malformed = 8,
    /// The mirror's files are in doubt after a failed write or fsync.
    Faulted = 9,
}

impl Status {
    pub fn from_u16(v: u16) -> Option<Status> {
        Some(match v {
            0 => Status::Accepted,
            1 => Status::BadKey,
            2 => Status::WrongCluster,
            3 => Status::WrongContent,
            4 => Status::WrongBlockSize,
            5 => Status::StaleGeneration,
            6 => Status::FilespaceMismatch,
            7 => Status::Busy,
            8 => Status::Malformed,
            9 => Status::Faulted,
            _ => return None,
        })
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn new() -> Writer {
        Writer::with_magic(MAGIC)
    }
    fn with_magic(magic: [u8; 4]) -> Writer {
        let mut v = Vec::with_capacity(256);
        v.extend_from_slice(&[0u8; 4]);
        v.extend_from_slice(&magic);
        v.extend_from_slice(&VERSION.to_le_bytes());
        Writer(v)
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    /// Seal: length prefix (of everything after it) and trailing xxh3.
    fn finish(mut self) -> Vec<u8> {
        let h = xxh3_64(&self.0[4..]);
        self.0.extend_from_slice(&h.to_le_bytes());
        let len = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&len.to_le_bytes());
        self.0
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// `msg` is one message without its length prefix; checks checksum, magic, version.
    fn open(msg: &'a [u8]) -> Result<Reader<'a>, HandshakeError> {
        Reader::open_with(msg, MAGIC)
    }
    fn open_with(msg: &'a [u8], expected: [u8; 4]) -> Result<Reader<'a>, HandshakeError> {
        if msg.len() < 14 {
            return Err(HandshakeError::Malformed(format!("message of {} bytes is too short", msg.len())));
        }
        let (body, sum) = msg.split_at(msg.len() - 8);
        let mut s = [0u8; 8];
        s.copy_from_slice(sum);
        if u64::from_le_bytes(s) != xxh3_64(body) {
            return Err(HandshakeError::Checksum);
        }
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&body[..4]);
        if magic != expected {
            return Err(HandshakeError::Magic(magic));
        }
        let version = u16::from_le_bytes([body[4], body[5]]);
        if version != VERSION {
            return Err(HandshakeError::Version(version));
        }
        Ok(Reader { b: body, pos: 6 })
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], HandshakeError> {
        if self.b.len() - self.pos < n {
            return Err(HandshakeError::Malformed(format!("message ends inside {what}")));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u16(&mut self, what: &str) -> Result<u16, HandshakeError> {
        let s = self.take(2, what)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, HandshakeError> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, HandshakeError> {
        let s = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn array32(&mut self, what: &str) -> Result<[u8; 32], HandshakeError> {
        let s = self.take(32, what)?;
        let mut a = [0u8; 32];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn end(&self) -> Result<(), HandshakeError> {
        if self.pos != self.b.len() {
            return Err(HandshakeError::Malformed(format!(
                "{} unexpected bytes after the last field",
                self.b.len() - self.pos
            )));
        }
        Ok(())
    }
}

/// Split one length-prefixed message off `buf`: `Ok(Some((msg, used)))`.
pub fn split_message(buf: &[u8]) -> Result<Option<(&[u8], usize)>, HandshakeError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_MESSAGE {
        return Err(HandshakeError::Malformed(format!("message length {len} is over the limit of {MAX_MESSAGE}")));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some((&buf[4..4 + len], 4 + len)))
}

/// Checks a filespace name: 1..=64 bytes of `[A-Za-z0-9_.-]`.
pub fn valid_filespace_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_FILESPACE_NAME
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.')
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub cluster_id: u64,
    pub content_id: u32,
    pub block_size: u32,
    pub generation: u64,
    /// The sequence number of the first frame the primary will send.
    pub start_seq: u64,
    pub client_nonce: [u8; 32],
    pub filespaces: Vec<String>,
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.cluster_id);
        w.u32(self.content_id);
        w.u32(self.block_size);
        w.u64(self.generation);
        w.u64(self.start_seq);
        w.bytes(&self.client_nonce);
        w.u16(self.filespaces.len() as u16);
        for f in &self.filespaces {
            w.bytes(&[f.len() as u8]);
            w.bytes(f.as_bytes());
        }
        w.finish()
    }

    pub fn decode(msg: &[u8]) -> Result<Hello, HandshakeError> {
        let mut r = Reader::open(msg)?;
        let cluster_id = r.u64("cluster id")?;
        let content_id = r.u32("content id")?;
        let block_size = r.u32("block size")?;
        let generation = r.u64("generation")?;
        let start_seq = r.u64("start sequence")?;
        let client_nonce = r.array32("nonce")?;
        let n = r.u16("filespace count")? as usize;
        if n == 0 || n > MAX_FILESPACES {
            return Err(HandshakeError::Malformed(format!("filespace count {n} is outside 1..={MAX_FILESPACES}")));
        }
        let mut filespaces = Vec::with_capacity(n);
        for i in 0..n {
            let len = r.take(1, "filespace name length")?[0] as usize;
            let raw = r.take(len, "filespace name")?;
            let name = std::str::from_utf8(raw)
                .ok()
                .filter(|s| valid_filespace_name(s))
                .ok_or_else(|| HandshakeError::Malformed(format!("filespace {i} has an invalid name")))?;
            filespaces.push(name.to_string());
        }
        r.end()?;
        Ok(Hello { cluster_id, content_id, block_size, generation, start_seq, client_nonce, filespaces })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub server_nonce: [u8; 32],
}

impl Challenge {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes(&self.server_nonce);
        w.finish()
    }
    pub fn decode(msg: &[u8]) -> Result<Challenge, HandshakeError> {
        let mut r = Reader::open(msg)?;
        let server_nonce = r.array32("nonce")?;
        r.end()?;
        Ok(Challenge { server_nonce })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    pub proof: [u8; 32],
}

impl Proof {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes(&self.proof);
        w.finish()
    }
    pub fn decode(msg: &[u8]) -> Result<Proof, HandshakeError> {
        let mut r = Reader::open(msg)?;
        let proof = r.array32("proof")?;
        r.end()?;
        Ok(Proof { proof })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub status: Status,
    /// The mirror's generation after the handshake.
    pub generation: u64,
    /// The mirror's proof (zero when refused).
    pub mirror_proof: [u8; 32],
    /// Why, when refused; empty when accepted.
    pub reason: String,
}

impl Verdict {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u16(self.status as u16);
        w.u64(self.generation);
        w.bytes(&self.mirror_proof);
        let reason = &self.reason.as_bytes()[..self.reason.len().min(MAX_REASON)];
        w.u16(reason.len() as u16);
        w.bytes(reason);
        w.finish()
    }
    pub fn decode(msg: &[u8]) -> Result<Verdict, HandshakeError> {
        let mut r = Reader::open(msg)?;
        let code = r.u16("status")?;
        let status =
            Status::from_u16(code).ok_or_else(|| HandshakeError::Malformed(format!("unknown status {code}")))?;
        let generation = r.u64("generation")?;
        let mirror_proof = r.array32("proof")?;
        let n = r.u16("reason length")? as usize;
        if n > MAX_REASON {
            return Err(HandshakeError::Malformed(format!("reason of {n} bytes is over {MAX_REASON}")));
        }
        let reason = String::from_utf8_lossy(r.take(n, "reason")?).into_owned();
        r.end()?;
        Ok(Verdict { status, generation, mirror_proof, reason })
    }
}

/// Whether a first message (without its prefix) asks for a network check
/// rather than a stream.
pub fn is_net_check(msg: &[u8]) -> bool {
    msg.len() >= 4 && msg[..4] == NET_CHECK_MAGIC
}

/// A network check's first message (§ 14): "I will send `bytes` bytes of
/// nothing, to time the network". Magic `FRPN`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetCheckHello {
    pub client_nonce: [u8; 32],
    /// 1..=[`MAX_NET_CHECK_BYTES`].
    pub bytes: u64,
}

impl NetCheckHello {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_magic(NET_CHECK_MAGIC);
        w.bytes(&self.client_nonce);
        w.u64(self.bytes);
        w.finish()
    }
    pub fn decode(msg: &[u8]) -> Result<NetCheckHello, HandshakeError> {
        let mut r = Reader::open_with(msg, NET_CHECK_MAGIC)?;
        let client_nonce = r.array32("nonce")?;
        let bytes = r.u64("byte count")?;
        r.end()?;
        if bytes == 0 || bytes > MAX_NET_CHECK_BYTES {
            return Err(HandshakeError::Malformed(format!(
                "a network check of {bytes} bytes is outside 1..={MAX_NET_CHECK_BYTES}"
            )));
        }
        Ok(NetCheckHello { client_nonce, bytes })
    }
}

/// The mirror's answer once a network check's bytes are in: how many it
/// read, and the nanoseconds from its first byte to its last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetCheckResult {
    pub received: u64,
    pub elapsed_ns: u64,
}

impl NetCheckResult {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.received);
        w.u64(self.elapsed_ns);
        w.finish()
    }
    pub fn decode(msg: &[u8]) -> Result<NetCheckResult, HandshakeError> {
        let mut r = Reader::open(msg)?;
        let received = r.u64("received")?;
        let elapsed_ns = r.u64("elapsed")?;
        r.end()?;
        Ok(NetCheckResult { received, elapsed_ns })
    }
}

/// Strip the length prefix off an encoded message (what `decode` takes).
pub fn payload(encoded: &[u8]) -> &[u8] {
    &encoded[4..]
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_key_file_problem_names_the_file_not_a_handshake() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("cluster.key");
        let e = ClusterKey::from_file(&missing).expect_err("no such file").to_string();
        assert!(e.starts_with(&format!("key file {}: cannot be read: ", missing.display())), "{e}");
        assert!(!e.contains("handshake"), "{e}");
        std::fs::write(&missing, b"short").expect("write");
        let e = ClusterKey::from_file(&missing).expect_err("too short").to_string();
        assert!(e.contains("key material is 5 bytes") && !e.contains("handshake"), "{e}");
    }

    use super::*;

    fn hello() -> Hello {
        Hello {
            cluster_id: 0xfeed,
            content_id: 3,
            block_size: 32768,
            generation: 2,
            start_seq: 1,
            client_nonce: [7; 32],
            filespaces: vec!["pg_system".into(), "fs_fast".into()],
        }
    }

    #[test]
    fn messages_round_trip() {
        let h = hello();
        let enc = h.encode();
        let (msg, used) = split_message(&enc).unwrap().unwrap();
        assert_eq!(used, enc.len());
        assert_eq!(Hello::decode(msg).unwrap(), h);
        let v =
            Verdict { status: Status::StaleGeneration, generation: 9, mirror_proof: [0; 32], reason: "stale".into() };
        assert_eq!(Verdict::decode(payload(&v.encode())).unwrap(), v);
        let c = Challenge { server_nonce: [1; 32] };
        assert_eq!(Challenge::decode(payload(&c.encode())).unwrap(), c);
    }

    #[test]
    fn corruption_and_bad_fields_are_refused() {
        let mut enc = hello().encode();
        enc[20] ^= 0xff;
        assert_eq!(Hello::decode(payload(&enc)), Err(HandshakeError::Checksum));
        let mut h = hello();
        h.filespaces = vec!["../etc".into()];
        assert!(matches!(Hello::decode(payload(&h.encode())), Err(HandshakeError::Malformed(_))));
        let huge = (MAX_MESSAGE as u32 + 1).to_le_bytes();
        assert!(split_message(&huge).is_err());
    }

    #[test]
    fn proofs_need_the_key() {
        let k1 = ClusterKey::from_material(b"correct horse battery staple").unwrap();
        let k2 = ClusterKey::from_material(b"another key of sufficient length").unwrap();
        let hb = hello().encode();
        let p1 = k1.primary_proof(&hb, &[1; 32], &[2; 32]);
        assert!(proofs_equal(&p1, &k1.primary_proof(&hb, &[1; 32], &[2; 32])));
        assert!(!proofs_equal(&p1, &k2.primary_proof(&hb, &[1; 32], &[2; 32])));
        assert!(!proofs_equal(&p1, &k1.mirror_proof(&hb, &[1; 32], &[2; 32])));
        assert!(!proofs_equal(&p1, &k1.primary_proof(&hb, &[1; 32], &[3; 32])));
        assert!(ClusterKey::from_material(b"short\n").is_err());
    }
}

//! The mirror's side of the handshake (docs/protocol.md § 2, and § 14 for
//! a network check): the first message decoded, the key proofs checked,
//! the identity checks, and the right to stream (or to check the network)
//! taken, or the peer refused with a Verdict that says why.

use super::{MirrorServer, SessionEnd, MAX_START_SEQ};
use crate::io::admission::Ticket;
use crate::io::net::{is_timeout, ConnReader, ConnWriter};
use crate::protocol::handshake::{self, ClusterKey, Hello, Status, Verdict};
use crate::runtime::primary::read_message;
use std::io::IoSlice;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// What an authenticated peer asked for, with the right to stream.
pub(super) enum Admitted<'a> {
    Stream(Hello, MutexGuard<'a, ()>),
    /// A network check of this many bytes (docs/protocol.md § 14), with
    /// the right to check.
    NetCheck(u64, MutexGuard<'a, ()>),
}

/// A connection's first message.
enum First {
    Stream(Hello),
    Check(handshake::NetCheckHello),
}

impl First {
    fn client_nonce(&self) -> [u8; 32] {
        match self {
            First::Stream(h) => h.client_nonce,
            First::Check(c) => c.client_nonce,
        }
    }
}

/// The accepted Verdict, with the mirror's proof.
fn accept(writer: &mut dyn ConnWriter, generation: u64, mirror_proof: [u8; 32]) -> Result<(), SessionEnd> {
    let v = Verdict { status: Status::Accepted, generation, mirror_proof, reason: String::new() };
    writer
        .send_all(&[IoSlice::new(&v.encode())])
        .map_err(|e| SessionEnd::Disconnected(format!("sending the verdict: {e}")))
}

impl MirrorServer {
    fn refuse(&self, writer: &mut dyn ConnWriter, status: Status, reason: String) -> SessionEnd {
        let v = Verdict { status, generation: self.generation(), mirror_proof: [0; 32], reason: reason.clone() };
        let _ = writer.send_all(&[IoSlice::new(&v.encode())]);
        SessionEnd::Refused(status, reason)
    }

    /// A right held for a session (`right`: streaming, or checking the
    /// network), one session at a time; Busy with `taken` if it is held.
    fn take_right<'a>(
        &self,
        right: &'a Mutex<()>,
        writer: &mut dyn ConnWriter,
        taken: &str,
    ) -> Result<MutexGuard<'a, ()>, SessionEnd> {
        match right.try_lock() {
            Ok(g) => Ok(g),
            // A session that panicked left nothing half-applied worth guarding.
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => Err(self.refuse(writer, Status::Busy, taken.into())),
        }
    }

    /// Returns what the authenticated peer asked for, with the right to
    /// stream (held for the session).
    pub(super) fn server_handshake(
        &self,
        reader: &mut dyn ConnReader,
        writer: &mut dyn ConnWriter,
        ticket: &mut Ticket,
    ) -> Result<Admitted<'_>, SessionEnd> {
        // One deadline for the whole handshake: a peer trickling bytes
        // cannot hold a connection slot longer than this.
        let limit = self.cfg.tuning.handshake_timeout;
        let deadline = ticket.deadline().min(Instant::now() + limit);
        let disconnected = |e: std::io::Error, ticket: &Ticket| {
            SessionEnd::Unauthenticated(match ticket.closed() {
                Some(why) => format!("during the handshake: {why}"),
                None if is_timeout(&e) => {
                    format!("the handshake deadline ({} ms) passed", limit.as_millis())
                }
                None => format!("during the handshake: {e}"),
            })
        };
        let raw = match read_message(reader, Some(deadline)) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(self.refuse(writer, Status::Malformed, e.to_string()))
            }
            Err(e) => return Err(disconnected(e, ticket)),
        };
        // A stream's Hello, or a network check's (protocol.md § 14): the
        // same key proofs, with labels of their own.
        let first = match handshake::is_net_check(&raw) {
            true => handshake::NetCheckHello::decode(&raw).map(First::Check),
            false => Hello::decode(&raw).map(First::Stream),
        };
        let first = match first {
            Ok(f) => f,
            Err(e) => return Err(self.refuse(writer, Status::Malformed, e.to_string())),
        };
        let client_nonce = first.client_nonce();
        let mut server_nonce = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut server_nonce);
        writer
            .send_all(&[IoSlice::new(&handshake::Challenge { server_nonce }.encode())])
            .map_err(|e| disconnected(e, ticket))?;
        let proof = read_message(reader, Some(deadline)).map_err(|e| disconnected(e, ticket))?;
        let proof = match handshake::Proof::decode(&proof) {
            Ok(p) => p,
            Err(e) => return Err(self.refuse(writer, Status::Malformed, e.to_string())),
        };
        let key: &ClusterKey = &self.cfg.key;
        let expect = match &first {
            First::Stream(_) => key.primary_proof(&raw, &client_nonce, &server_nonce),
            First::Check(_) => key.net_check_proof(&raw, &client_nonce, &server_nonce),
        };
        if !handshake::proofs_equal(&expect, &proof.proof) {
            return Err(self.refuse(writer, Status::BadKey, "the peer did not prove it holds the cluster key".into()));
        }
        // Authenticated: out of the small unauthenticated budget.
        if let Err(e) = ticket.authenticate() {
            return Err(self.refuse(writer, Status::Busy, format!("no room for another session: {e}")));
        }
        let hello = match first {
            First::Stream(hello) => hello,
            First::Check(check) => {
                // Not the streaming right: a check may time the link beside
                // an idle or live stream (it takes its bandwidth), one at a time.
                let right = self.take_right(&self.net_checking, writer, "another network check is running")?;
                let mirror_proof = key.net_check_mirror_proof(&raw, &client_nonce, &server_nonce);
                accept(writer, self.generation(), mirror_proof)?;
                return Ok(Admitted::NetCheck(check.bytes, right));
            }
        };
        let fault = self.fault.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(f) = fault {
            return Err(self.refuse(
                writer,
                Status::Faulted,
                format!("this mirror faulted ({f}); its files are in doubt until a full resync"),
            ));
        }
        let cfg = &self.cfg;
        if hello.start_seq == 0 || hello.start_seq > MAX_START_SEQ {
            return Err(self.refuse(
                writer,
                Status::Malformed,
                format!("start sequence {} is out of range", hello.start_seq),
            ));
        }
        if hello.cluster_id != cfg.cluster_id {
            return Err(self.refuse(
                writer,
                Status::WrongCluster,
                format!("cluster id {:#x} is not this mirror's cluster {:#x}", hello.cluster_id, cfg.cluster_id),
            ));
        }
        if hello.content_id != cfg.content_id {
            return Err(self.refuse(
                writer,
                Status::WrongContent,
                format!("content {} is not this mirror's content {}", hello.content_id, cfg.content_id),
            ));
        }
        if hello.block_size != cfg.block_size {
            return Err(self.refuse(
                writer,
                Status::WrongBlockSize,
                format!("block size {} differs from this mirror's {}", hello.block_size, cfg.block_size),
            ));
        }
        let names: Vec<&str> = cfg.filespaces.iter().map(|f| f.name.as_str()).collect();
        if hello.filespaces.iter().map(String::as_str).ne(names.iter().copied()) {
            return Err(self.refuse(
                writer,
                Status::FilespaceMismatch,
                format!("filespaces {:?} differ from this mirror's {:?}", hello.filespaces, names),
            ));
        }
        let current = self.generation();
        if hello.generation < current {
            return Err(self.refuse(
                writer,
                Status::StaleGeneration,
                format!(
                    "generation {} is older than this mirror's {current}: that primary was replaced",
                    hello.generation
                ),
            ));
        }
        let streaming = self.take_right(&self.streaming, writer, "another primary is streaming to this mirror")?;
        if hello.generation > current {
            self.generation.store(hello.generation, Ordering::SeqCst);
            // Recorded before the stream is accepted: a restart cannot forget it.
            if let Err(e) = self.persist() {
                self.generation.store(current, Ordering::SeqCst);
                return Err(self.refuse(
                    writer,
                    Status::Faulted,
                    format!("cannot record generation {}: {e}", hello.generation),
                ));
            }
        }
        let mirror_proof = key.mirror_proof(&raw, &hello.client_nonce, &server_nonce);
        accept(writer, hello.generation, mirror_proof)?;
        Ok(Admitted::Stream(hello, streaming))
    }
}

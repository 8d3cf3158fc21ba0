//! The bare pair (`filerep bench --bare`): the benchmark's writes shipped
//! with nothing else, as a reference for what synchronous replication over
//! loopback TCP can reach on the machine at hand. No engine, no checksum,
//! no activity log, no shared socket: each writer has a TCP connection of
//! its own to a mirror thread of its own (in this process, which only
//! makes it cheaper), sends a 16-byte header and the block, writes its own
//! copy, and waits for an 8-byte acknowledgement that the mirror sends once
//! its copy is written (a sync: once it is `fdatasync`ed). Nothing is
//! checked and nothing survives a fault: it is a measurement, not a pair.
//!
//! Its ratio over the baseline is an upper bound for this design's ratio
//! here, and `replicated_over_bare` is how close the real pair comes.

use filerep::error::{Error, Result};
use filerep::io::disk::direct::{AlignedBuf, DIRECT_ALIGN as ALIGN};
use filerep::io::net::{recv_exact, ConnReader, ConnWriter};
use std::fs::File;
use std::io::IoSlice;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;

/// A header's kinds.
const WRITE: u32 = 1;
const SYNC: u32 = 2;
/// Header: kind u32, length u32, offset u64, little-endian.
const HEADER: usize = 16;

/// One writer's side: its connection, its file, its aligned copy.
struct Side {
    reader: Box<dyn ConnReader>,
    writer: Box<dyn ConnWriter>,
    file: File,
    copy: Option<AlignedBuf>,
}

/// The running bare pair: one [`Side`] per writer, one mirror thread each.
pub struct BarePair {
    block_size: usize,
    sides: Vec<Mutex<Side>>,
    mirrors: Vec<JoinHandle<Result<()>>>,
    dir: PathBuf,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::io(what, e)
}

fn open(path: &Path, direct: bool) -> Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true).create_new(true);
    if direct {
        o.custom_flags(nix::fcntl::OFlag::O_DIRECT.bits());
    }
    o.open(path).map_err(io(format!("creating {}", path.display())))
}

fn header(kind: u32, len: u32, offset: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..16].copy_from_slice(&offset.to_le_bytes());
    h
}

/// A mirror thread: apply what its connection sends until it closes.
fn mirror(conn: TcpStream, file: File, block_size: usize, direct: bool, cpu: Option<usize>) -> Result<()> {
    if let Some(c) = cpu {
        let mut set = nix::sched::CpuSet::new();
        set.set(c).map_err(|e| Error::InvalidArgument(format!("CPU {c}: {e}")))?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .map_err(|e| Error::InvalidArgument(format!("cannot run the bare mirror on CPU {c}: {e}")))?;
    }
    // The pair's own TCP set-up (no delay, its socket buffers).
    let (mut reader, mut writer) = filerep::io::net::tcp(conn).map_err(io("the bare mirror's connection"))?;
    let mut buf = AlignedBuf::new(block_size);
    let mut h = [0u8; HEADER];
    loop {
        match recv_exact(reader.as_mut(), &mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(Error::io("the bare mirror's receive", e)),
        }
        let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        let offset = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
        match kind {
            WRITE if len == block_size => {
                recv_exact(reader.as_mut(), buf.as_mut_slice()).map_err(io("the bare mirror's receive"))?;
                let data = if direct { buf.as_slice() } else { &buf.as_slice()[..len] };
                file.write_all_at(data, offset).map_err(io("the bare mirror's write"))?;
            }
            SYNC => file.sync_data().map_err(io("the bare mirror's fdatasync"))?,
            _ => return Err(Error::InvalidArgument(format!("bare pair: header kind {kind}, length {len}"))),
        }
        let ack = offset.to_le_bytes();
        writer.send_all(&[IoSlice::new(&ack)]).map_err(io("the bare mirror's acknowledgement"))?;
    }
}

impl BarePair {
    /// Start `writers` sides under `dir` (made fresh), with O_DIRECT files
    /// if `direct`; `mirror_cpu`: the CPU the mirror threads run on.
    pub fn start(
        dir: &Path,
        writers: usize,
        block_size: u32,
        direct: bool,
        mirror_cpu: Option<usize>,
    ) -> Result<BarePair> {
        if direct && block_size as usize % ALIGN != 0 {
            return Err(Error::InvalidArgument(format!("--direct needs blocks in multiples of {ALIGN} B")));
        }
        // Fresh: what a killed run left there would make the creates fail.
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io(format!("clearing {}", dir.display())))?;
        }
        let (pd, md) = (dir.join("primary"), dir.join("mirror"));
        for d in [&pd, &md] {
            std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
        }
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io("the bare pair's listener"))?;
        let addr = listener.local_addr().map_err(io("the bare pair's listener"))?;
        let mut pair = BarePair {
            block_size: block_size as usize,
            sides: Vec::new(),
            mirrors: Vec::new(),
            dir: dir.to_path_buf(),
        };
        for w in 0..writers {
            let conn = TcpStream::connect(addr).map_err(io("connecting the bare pair"))?;
            let (theirs, _) = listener.accept().map_err(io("accepting the bare pair"))?;
            let file = open(&pd.join(format!("bare{w}")), direct)?;
            let mirror_file = open(&md.join(format!("bare{w}")), direct)?;
            let bs = block_size as usize;
            let handle = std::thread::Builder::new()
                .name(format!("bare-mirror-{w}"))
                .spawn(move || mirror(theirs, mirror_file, bs, direct, mirror_cpu))
                .map_err(io("spawning a bare mirror thread"))?;
            pair.mirrors.push(handle);
            let (reader, writer) = filerep::io::net::tcp(conn).map_err(io("the bare pair's connection"))?;
            pair.sides.push(Mutex::new(Side { reader, writer, file, copy: direct.then(|| AlignedBuf::new(bs)) }));
        }
        Ok(pair)
    }

    fn side(&self, w: usize) -> Result<std::sync::MutexGuard<'_, Side>> {
        let side = self.sides.get(w).ok_or_else(|| Error::InvalidArgument(format!("no bare writer {w}")))?;
        Ok(side.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn await_ack(side: &mut Side) -> Result<()> {
        let mut ack = [0u8; 8];
        recv_exact(side.reader.as_mut(), &mut ack).map_err(io("the bare pair's acknowledgement"))
    }

    /// Writer `w` writes `data` at `offset`: sent first, then its own copy,
    /// then the mirror's acknowledgement.
    pub fn write(&self, w: usize, offset: u64, data: &[u8]) -> Result<()> {
        if data.len() != self.block_size {
            return Err(Error::InvalidArgument(format!(
                "bare pair: a write of {} B (blocks are {} B)",
                data.len(),
                self.block_size
            )));
        }
        let mut side = self.side(w)?;
        let side = &mut *side;
        let h = header(WRITE, data.len() as u32, offset);
        side.writer.send_all(&[IoSlice::new(&h), IoSlice::new(data)]).map_err(io("the bare pair's send"))?;
        let local = match side.copy.as_mut() {
            Some(copy) => {
                copy.as_mut_slice().copy_from_slice(data);
                copy.as_slice()
            }
            None => data,
        };
        side.file.write_all_at(local, offset).map_err(io("the bare pair's local write"))?;
        Self::await_ack(side)
    }

    /// Writer `w`'s file made durable on both sides.
    pub fn sync(&self, w: usize) -> Result<()> {
        let mut side = self.side(w)?;
        let side = &mut *side;
        let h = header(SYNC, 0, 0);
        side.writer.send_all(&[IoSlice::new(&h)]).map_err(io("the bare pair's send"))?;
        side.file.sync_data().map_err(io("the bare pair's fdatasync"))?;
        Self::await_ack(side)
    }

    /// Close the connections, wait for the mirror threads, remove the files.
    pub fn stop(self) -> Result<()> {
        drop(self.sides);
        let mut first = Ok(());
        for m in self.mirrors {
            let r = m.join().unwrap_or_else(|_| Err(Error::InvalidArgument("a bare mirror thread panicked".into())));
            if first.is_ok() {
                first = r;
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_copies_hold_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let pair = BarePair::start(dir.path(), 2, 8192, false, None).unwrap();
        let a: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        let b = vec![0xa5u8; 8192];
        pair.write(0, 8192, &a).unwrap();
        pair.write(1, 0, &b).unwrap();
        let e = pair.write(1, 0, &b[..100]).unwrap_err().to_string();
        assert!(e.contains("a write of 100 B"), "{e}");
        pair.sync(0).unwrap();
        pair.sync(1).unwrap();
        for side in ["primary", "mirror"] {
            let f0 = std::fs::read(dir.path().join(side).join("bare0")).unwrap();
            assert_eq!(&f0[8192..], &a[..], "writer 0's block on the {side}");
            assert!(f0[..8192].iter().all(|&x| x == 0), "the hole before it on the {side}");
            assert_eq!(std::fs::read(dir.path().join(side).join("bare1")).unwrap(), b, "writer 1 on the {side}");
        }
        pair.stop().unwrap();
        assert!(!dir.path().join("mirror").exists(), "stop removes the files");
        // What a killed run left is cleared at the next start.
        std::fs::create_dir_all(dir.path().join("primary")).unwrap();
        std::fs::write(dir.path().join("primary/bare0"), b"left over").unwrap();
        BarePair::start(dir.path(), 1, 8192, false, None).unwrap().stop().unwrap();
    }

    #[test]
    fn a_header_the_mirror_does_not_know_ends_its_thread_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let pair = BarePair::start(dir.path(), 1, 4096, false, None).unwrap();
        {
            let mut side = pair.side(0).unwrap();
            let h = header(WRITE, 100, 0);
            side.writer.send_all(&[IoSlice::new(&h)]).unwrap();
        }
        let err = pair.stop().unwrap_err().to_string();
        assert!(err.contains("header kind 1, length 100"), "{err}");
    }
}

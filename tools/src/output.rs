//! Standard output that its reader may stop reading.
//!
//! `filerep state | head` closes the pipe after ten lines; `println!`
//! panics at the next line. Here a write that fails stops the output, not
//! the command: the command finishes what it was doing (a daemon keeps
//! serving, a benchmark cleans up its processes) and exits with its own
//! status. A closed pipe is what its reader asked for and goes unreported;
//! any other failure (a full disk behind a redirection) is kept for
//! [`failure`]: the command's output is incomplete, and it must not exit
//! as if it had delivered it.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Set once a write to standard output failed: later lines are dropped.
static STOPPED: AtomicBool = AtomicBool::new(false);
/// The first failure of standard output other than a closed pipe.
static FAILURE: OnceLock<String> = OnceLock::new();

/// Why standard output failed, if it failed other than by its reader
/// closing it: the output is incomplete.
pub fn failure() -> Option<&'static str> {
    FAILURE.get().map(String::as_str)
}

/// Write `args` and a newline to standard output, unless it failed before.
/// Use [`outln!`](crate::outln).
pub fn line(args: std::fmt::Arguments<'_>) {
    if STOPPED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
    if let Err(e) = written {
        STOPPED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = FAILURE.set(e.to_string());
        }
    }
}

/// `println!` for operator output: a closed or failed standard output
/// stops the output instead of panicking ([`line`]).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}

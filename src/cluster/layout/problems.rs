//! What validation reports: each broken rule, where it is and what to do.

use std::fmt;

/// Where a problem is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Where {
    /// In a configuration file (1-based line and column, in characters).
    File {
        file: String,
        line: usize,
        column: usize,
    },
    /// An entry (`mirror<N>` or `filespaceOrder`) of a configuration built in code.
    Entry {
        name: String,
    },
    /// An existing segment.
    Segment {
        host: String,
        content: u32,
        dbid: u32,
    },
    Host {
        host: String,
    },
    Cluster,
}

impl fmt::Display for Where {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Where::File { file, line, column } => write!(f, "{file}:{line}:{column}"),
            Where::Entry { name } => write!(f, "{name}"),
            Where::Segment { host, content, dbid } => write!(f, "host {host}, content {content} (dbid {dbid})"),
            Where::Host { host } => write!(f, "host {host}"),
            Where::Cluster => write!(f, "cluster"),
        }
    }
}

/// What kind of rule a [`Problem`] breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// The cluster description itself is inconsistent.
    Cluster,
    /// `filespaceOrder` does not name the cluster's non-default filespaces.
    FilespaceOrder,
    LocationCount,
    UnknownContent,
    DuplicateContent,
    AlreadyMirrored,
    MissingMirror,
    UnknownAddress,
    SameHost,
    Unbalanced,
    BadPort,
    PortCollision,
    RelativeLocation,
    SameDirectoryAsPrimary,
    DirectoryOverlap,
    DirectoryNotEmpty,
    NotADirectory,
    /// A directory cannot be created or written at the location.
    NotWritable,
    /// A new port is held by a process outside the cluster.
    PortInUse,
    ProbeFailed,
}

/// One broken rule: where, which, and a message saying what is wrong and
/// what to do. Displays as `WHERE: MESSAGE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub at: Where,
    pub kind: ProblemKind,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Most problems a message lists (all are kept in [`ValidationErrors`]).
pub const SHOWN_PROBLEMS: usize = 50;

/// Every problem validation found. Never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<Problem>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "the mirror configuration has {n} problem{}:", if n == 1 { "" } else { "s" })?;
        for p in self.0.iter().take(SHOWN_PROBLEMS) {
            write!(f, "\n  {p}")?;
        }
        if n > SHOWN_PROBLEMS {
            let more = n - SHOWN_PROBLEMS;
            write!(f, "\n  … and {more} more (the first {SHOWN_PROBLEMS} are shown; fix them and run it again)")?;
        }
        Ok(())
    }
}

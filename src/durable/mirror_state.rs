//! What a mirror remembers across restarts (`mirror-state.json`, sealed):
//! the generation it last accepted and the fault that stops it. A durable
//! format like the catalog's, so it lives with them; the mirror's runtime
//! reads and writes it.

use super::files;
use crate::error::{Error, Result};
use crate::io::disk::{Disk, FsPath};
use std::path::Path;

/// What a mirror remembers across restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MirrorState {
    pub generation: u64,
    pub fault: Option<String>,
    /// Set (to the host's boot id) while a session streams, cleared once
    /// its end made everything it applied durable. Found set from another
    /// boot: the host lost power (or rebooted) mid-session, so what the
    /// mirror had applied and acknowledged but not yet synced may be gone,
    /// and it must not be promoted ([`crate::core::mirror::promotion_refusal`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming_boot: Option<String>,
}

const STATE_FILE: &str = "mirror-state.json";

impl MirrorState {
    /// The format version of the sealed state file.
    pub const VERSION: u32 = 1;

    /// Load the state file; a missing file is the empty state. A sealed
    /// file must be whole; plain JSON (an older filerep's) is read as is.
    pub fn load(dir: &Path) -> Result<MirrorState> {
        let path = dir.join(STATE_FILE);
        match files::on_host(&path)? {
            Some((disk, p)) => Self::load_from(&disk, &p, &path),
            None => Ok(MirrorState::default()),
        }
    }

    /// Replace the state file, sealed, atomically and durably.
    pub fn store(&self, dir: &Path) -> Result<()> {
        let path = dir.join(STATE_FILE);
        match files::on_host(&path)? {
            Some((disk, p)) => self.store_to(&disk, &p, &path),
            None => Err(Error::InvalidArgument(format!("state directory {} does not exist", dir.display()))),
        }
    }

    /// [`MirrorState::load`] through any disk (`shown` names it in messages).
    pub fn load_from(disk: &dyn Disk, path: &FsPath, shown: &Path) -> Result<MirrorState> {
        use crate::durable::sealed;
        let restore = "its generation and fault record cannot be trusted: remove the file, start the segment, and \
                       rebuild this mirror with a full resync (filerep recover -F --content N)";
        let state = sealed::read_state_on(disk, path, shown, sealed::Kind::MirrorState, Self::VERSION, true, restore)?;
        Ok(state.unwrap_or_default())
    }

    /// [`MirrorState::store`] through any disk.
    pub fn store_to(&self, disk: &dyn Disk, path: &FsPath, shown: &Path) -> Result<()> {
        use crate::durable::sealed;
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        sealed::replace_on(disk, path, &sealed::seal(sealed::Kind::MirrorState, Self::VERSION, &json))
            .map_err(|e| Error::io(format!("writing {}", shown.display()), e))
    }
}

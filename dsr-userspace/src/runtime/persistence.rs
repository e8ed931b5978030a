//! What the daemon saves in its state directory after every change, so that a restart adopts
//! the running data path with the same ids, MACs, health and runtime changes.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    runtime::state::State,
    spec::{journal::Change, model::Model},
};

/// What is saved in the state directory after every change.
#[derive(Serialize, Deserialize)]
pub struct Saved {
    pub layout_version: u32,
    pub interface: String,
    /// `None` after `dsr stop`: the maps (and so the ids) are gone.
    pub state: Option<State>,
    pub journal: Vec<Change>,
}

pub fn state_file(model: &Model) -> PathBuf {
    model.state_dir.join("state.json")
}

pub fn read_saved(model: &Model) -> Option<Saved> {
    let text = std::fs::read_to_string(state_file(model)).ok()?;
    match serde_json::from_str::<Saved>(&text) {
        Ok(s) if s.layout_version == dsr_common::LAYOUT_VERSION => Some(s),
        Ok(s) => {
            log::warn!(
                "{}: state saved for map layout {}; its ids are not used, its runtime changes are",
                state_file(model).display(),
                s.layout_version
            );
            Some(Saved { state: None, ..s })
        }
        // The runtime changes are the operator's: keep them even when the rest of the file
        // no longer reads (saved by another version).
        Err(e) if journal_of(&text).is_some() => {
            log::warn!(
                "{}: unreadable ({e}); its runtime changes are kept",
                state_file(model).display()
            );
            journal_of(&text)
        }
        Err(e) => {
            log::warn!("{}: unreadable ({e}); ignored", state_file(model).display());
            None
        }
    }
}

/// Just the journal (and interface) of a saved file whose state no longer parses.
fn journal_of(text: &str) -> Option<Saved> {
    #[derive(Deserialize)]
    struct Partial {
        interface: String,
        journal: Vec<Change>,
    }
    let p: Partial = serde_json::from_str(text).ok()?;
    Some(Saved {
        layout_version: 0,
        interface: p.interface,
        state: None,
        journal: p.journal,
    })
}

/// Saves `saved` whole or not at all (written beside, then renamed over the old file), so a
/// full disk leaves the previous state in place and says so.
pub fn write_saved(config: &Model, saved: &Saved) -> Result<()> {
    let path = state_file(config);
    let tmp = path.with_extension("json.tmp");
    let result = (|| -> Result<()> {
        std::fs::create_dir_all(&config.state_dir)?;
        std::fs::write(&tmp, serde_json::to_vec_pretty(saved)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        // Readable by the operators' group (for `dsr status` while the daemon is down), by
        // nobody else: it holds the whole runtime state.
        use std::os::unix::fs::PermissionsExt;
        if let Some(gid) = config.control_group {
            std::os::unix::fs::chown(&config.state_dir, None, Some(gid))?;
            std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o750))?;
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o640))?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    })();
    if result.is_err() {
        // A half-written file would hold on to the space that ran out.
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("saving state to {}", path.display()))
}

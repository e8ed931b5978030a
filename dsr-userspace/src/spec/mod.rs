//! What the operator asked for, whatever the source: the model (`model`), its one validation
//! (`validate`), the TOML file that is its usual source (`toml_file`) and the journal of
//! runtime changes replayed over it (`journal`). A TOML file, a reload, a CLI change, a
//! control-socket message and a journal replay all end in the same [`validate::vips`].

pub mod journal;
pub mod keepalived;
pub mod model;
pub mod toml_file;
pub mod validate;

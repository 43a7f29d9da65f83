//! The review console (`jupyter-audit serve`, issue 14): what its pages read.
//!
//! - [`index`]: a rebuildable SQLite index beside the store (sessions, cells, code search),
//!   caught up incrementally from the store, which stays the source of truth.

pub mod index;

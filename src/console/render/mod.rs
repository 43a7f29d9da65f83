//! HTML of what notebook users wrote (code, outputs): escaped, coloured with classes,
//! never able to run in the console's origin.
//!
//! - [`ansi`]: ANSI colours (tracebacks) as spans.
//! - [`code`]: code with light highlighting.
//! - [`output`]: one output as the notebook showed it, in the console's safe forms.

pub mod ansi;
pub mod code;
pub mod output;

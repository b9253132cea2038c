//! Cache-Control docs placeholder
mod directives;
pub use directives::{Directives, InvalidDirective};

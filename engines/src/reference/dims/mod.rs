//! What the reference engine reads from each config it implements, and the refusals of what it
//! does not implement (naming the key). This is the reference engine's own knowledge: the
//! harness itself knows an architecture only through its recorded structure.

pub mod bert;
pub mod decoder;
pub mod distilbert;
pub mod gpt2;
pub mod modernbert;

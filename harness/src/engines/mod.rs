//! Engines that ship with the harness.

pub mod reference;

//! Engines that ship with the harness.

pub mod candle_tx;
pub mod reference;

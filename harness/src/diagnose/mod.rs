//! Localizing a divergence: which tap, in forward order, first leaves its tolerance.

use crate::report::TapReport;

/// The first tap in forward order that is not within tolerance.
pub fn first_divergence(taps: &[TapReport]) -> Option<usize> {
    taps.iter().position(|t| !t.status.is_pass())
}

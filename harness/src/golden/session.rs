//! The review workflow of `harness goldens review`: show each pending case's deltas, then accept
//! or reject it, one at a time (interactive on a terminal) or not at all (print only).

use std::io::{BufRead, Write};
use std::path::Path;

use super::pending::{self, Pending};
use super::review::{self, Review};
use crate::error::{Error, Result};
use crate::tolerance::Tolerance;

/// What the reviewer decided for one pending entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Accept,
    Reject,
    Skip,
}

/// The tolerance of each tap of the current case, to judge whether a move is within it.
pub fn case_tolerances(root: &Path, id: &str) -> impl Fn(&str) -> Option<Tolerance> + use<> {
    let file = crate::project::cases_dir(root).join(format!("{id}.yaml"));
    let case = crate::case::load_case(root, &file, &mut Default::default()).ok();
    move |tap: &str| case.as_ref()?.taps.iter().find(|t| t.name == tap).map(|t| t.tolerance.clone())
}

pub fn review_one(root: &Path, p: &Pending) -> Result<Review> {
    review::review(p, &case_tolerances(root, &p.id))
}

fn io(e: std::io::Error) -> Error {
    Error::new(crate::error::ErrorKind::Io, format!("terminal: {e}"))
}

/// Review `pending` one by one. With `input`, ask for each: `y` accept, `n` reject, `s` skip,
/// `A` accept this and all the rest, `q` quit. Without, print the reviews only.
pub fn run(
    root: &Path,
    goldens_dir: &Path,
    pending: &[Pending],
    mut input: Option<&mut dyn BufRead>,
    out: &mut dyn Write,
) -> Result<Vec<(String, Decision)>> {
    let mut decided = Vec::new();
    let mut accept_rest = false;
    for (i, p) in pending.iter().enumerate() {
        if !p.marker().is_file() {
            continue; // accepted together with a case (a model) earlier in this session
        }
        let r = review_one(root, p)?;
        writeln!(out, "[{}/{}] {}", i + 1, pending.len(), review::render(&r)).map_err(io)?;
        let Some(inp) = input.as_deref_mut() else { continue };
        let d = if accept_rest {
            Decision::Accept
        } else {
            loop {
                write!(
                    out,
                    "accept the new goldens of {}? [y]es / [n]o, reject / [s]kip / [A]ccept all / [q]uit: ",
                    p.id
                )
                .map_err(io)?;
                out.flush().map_err(io)?;
                let mut line = String::new();
                if inp.read_line(&mut line).map_err(io)? == 0 {
                    return Ok(decided);
                }
                match line.trim() {
                    "y" | "yes" => break Decision::Accept,
                    "n" | "no" => break Decision::Reject,
                    "s" | "skip" | "" => break Decision::Skip,
                    "A" | "all" => {
                        accept_rest = true;
                        break Decision::Accept;
                    }
                    "q" | "quit" => return Ok(decided),
                    other => writeln!(out, "unknown answer `{other}`").map_err(io)?,
                }
            }
        };
        match d {
            Decision::Accept => {
                for a in pending::accept(goldens_dir, p)? {
                    writeln!(out, "accepted {} ({} files changed)", a.id, a.changed.len()).map_err(io)?;
                }
            }
            Decision::Reject => {
                pending::reject(p)?;
                writeln!(out, "rejected {}: the accepted goldens are unchanged", p.id).map_err(io)?;
            }
            Decision::Skip => writeln!(out, "skipped {}: still pending", p.id).map_err(io)?,
        }
        decided.push((p.id.clone(), d));
    }
    Ok(decided)
}

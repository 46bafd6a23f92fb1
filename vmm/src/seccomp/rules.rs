//! The allow-list vocabulary: one [`Allow`] per syscall a thread kind needs, with the reason,
//! and, where the arguments decide whether the call is harmless, the arguments it may have.

use std::collections::BTreeMap;

/// A condition on a syscall's arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum When {
    /// Any arguments.
    Always,
    /// Argument `index` (its low 32 bits) is one of `values` (ioctl requests, socket domains,
    /// prctl options).
    ArgIn(u8, Vec<u64>),
    /// Argument `index`, all 64 bits, is one of `values` (a pid).
    Arg64In(u8, Vec<u64>),
    /// Argument `index` has every bit of `bits` set (clone flags).
    HasBits(u8, u64),
    /// Argument `index` masked with `.1` equals `.2` (a file type in a mode).
    Masked(u8, u64, u64),
}

/// One allowed syscall.
#[derive(Clone, Debug)]
pub struct Allow {
    pub nr: i64,
    pub when: When,
    /// Why the thread kind needs it (documentation; shown by no code).
    pub why: &'static str,
}

/// A syscall allowed with any arguments.
pub fn any(nr: libc::c_long, why: &'static str) -> Allow {
    Allow {
        nr,
        when: When::Always,
        why,
    }
}

/// A syscall allowed when argument `index` is one of `values`.
pub fn arg_in(nr: libc::c_long, index: u8, values: Vec<u64>, why: &'static str) -> Allow {
    Allow {
        nr,
        when: When::ArgIn(index, values),
        why,
    }
}

/// `ioctl` with one of `requests`.
pub fn ioctl_in(requests: Vec<u64>, why: &'static str) -> Allow {
    arg_in(libc::SYS_ioctl, 1, requests, why)
}

/// The merged allow-list of a thread kind: per syscall, `None` for any arguments, or the
/// alternatives (any one suffices).
pub type Table = BTreeMap<i64, Option<Vec<When>>>;

/// Folds allows into a table; an unconditional allow absorbs conditional ones.
pub fn table(allows: impl IntoIterator<Item = Allow>) -> Table {
    let mut t = Table::new();
    for a in allows {
        add(&mut t, a.nr, a.when);
    }
    t
}

fn add(t: &mut Table, nr: i64, when: When) {
    let entry = t.entry(nr).or_insert_with(|| Some(Vec::new()));
    match (entry.as_mut(), when) {
        (None, _) => {}
        (Some(_), When::Always) => *entry = None,
        (Some(alts), w) => {
            if !alts.contains(&w) {
                alts.push(w);
            }
        }
    }
}

/// The union of tables (the controller thread's list covers every thread it may spawn, since a
/// thread starts with its creator's filter and can only narrow it).
pub fn union<'a>(tables: impl IntoIterator<Item = &'a Table>) -> Table {
    let mut t = Table::new();
    for other in tables {
        for (nr, alts) in other {
            match alts {
                None => add(&mut t, *nr, When::Always),
                Some(alts) => {
                    if alts.is_empty() {
                        // A conditional entry with no alternatives allows nothing; keep it so.
                        t.entry(*nr).or_insert_with(|| Some(Vec::new()));
                    }
                    for w in alts {
                        add(&mut t, *nr, w.clone());
                    }
                }
            }
        }
    }
    t
}

/// Whether `t` allows syscall `nr` with some arguments.
pub fn mentions(t: &Table, nr: i64) -> bool {
    t.get(&nr)
        .is_some_and(|alts| alts.as_ref().is_none_or(|a| !a.is_empty()))
}

//! Checked-in seed corpora, and the mutations that grow a fuzz run from them.
//!
//! A corpus is a directory of inputs a parser must handle: the forms people send, the
//! forms that once broke it, the edges of its grammar. Each file name says what the
//! input must come to: `ok-*` is accepted, `refused-*` refused (with an error, never a
//! panic). Every seed is replayed exactly, as a regression test, and then mutated
//! (bytes flipped, inserted, deleted, duplicated, spliced from another seed) by a
//! proptest strategy, so the generated inputs stay close to the grammar that matters
//! instead of being uniformly random. This is coverage-blind fuzzing on the stable
//! toolchain; the seeds carry the coverage.

use std::path::Path;

use proptest::prelude::*;

/// One input of a corpus.
#[derive(Debug, Clone)]
pub struct Seed {
    /// The file name, which says the expected outcome (see [`Seed::must_be_accepted`]).
    pub name: String,
    pub bytes: Vec<u8>,
}

impl Seed {
    /// `ok-*` seeds must be accepted, `refused-*` seeds refused.
    pub fn must_be_accepted(&self) -> bool {
        assert!(
            self.name.starts_with("ok-") || self.name.starts_with("refused-"),
            "corpus file {} is named neither ok-* nor refused-*",
            self.name
        );
        self.name.starts_with("ok-")
    }

    /// The seed as text (corpora of text formats are UTF-8 apart from seeds about
    /// encoding, which should not be read with this).
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.bytes).expect("seed is UTF-8")
    }
}

/// Every file in `dir`, sorted by name. An empty or missing corpus fails loudly: a
/// fuzz run with nothing to start from would pass without testing anything.
pub fn seeds(dir: impl AsRef<Path>) -> Vec<Seed> {
    let dir = dir.as_ref();
    let mut seeds: Vec<Seed> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            Seed {
                name: path.file_name().unwrap().to_string_lossy().into_owned(),
                bytes: std::fs::read(&path).unwrap(),
            }
        })
        .collect();
    assert!(!seeds.is_empty(), "corpus {} is empty", dir.display());
    seeds.sort_by(|a, b| a.name.cmp(&b.name));
    seeds
}

/// Bytes that move a parser between states: structure, escapes, digits, and bytes that
/// are not UTF-8.
const INTERESTING: &[u8] = b"{}[]\":,\\-+.0123456789eEnultfrs \n\t\x00\x7f\x80\xc3\xed\xff";

/// One edit: (kind, position, length or second position, byte).
type Edit = (u8, usize, usize, u8);

/// Inputs grown from `seeds` by one to four edits each.
pub fn mutations(seeds: &[Seed]) -> impl Strategy<Value = Vec<u8>> + use<> {
    let all: Vec<Vec<u8>> = seeds.iter().map(|s| s.bytes.clone()).collect();
    let count = all.len();
    (
        0..count,
        proptest::collection::vec((0u8..6, any::<usize>(), any::<usize>(), any::<u8>()), 1..5),
    )
        .prop_map(move |(index, edits)| {
            let mut bytes = all[index].clone();
            for edit in edits {
                apply(&mut bytes, edit, &all);
            }
            bytes
        })
}

fn apply(bytes: &mut Vec<u8>, (kind, at, other, byte): Edit, all: &[Vec<u8>]) {
    let at = if bytes.is_empty() {
        0
    } else {
        at % (bytes.len() + 1)
    };
    let tail = bytes.len() - at;
    match kind {
        // Flip one bit of a byte.
        0 if at < bytes.len() => bytes[at] ^= 1 << (byte % 8),
        // Insert a byte that matters to the grammar, or any byte.
        1 | 0 => {
            let inserted = if byte < 128 {
                INTERESTING[usize::from(byte) % INTERESTING.len()]
            } else {
                byte
            };
            bytes.insert(at, inserted);
        }
        // Delete a run.
        2 => {
            let len = other % (tail.min(16) + 1);
            bytes.drain(at..at + len);
        }
        // Repeat a run in place (nesting, long values).
        3 => {
            let len = other % (tail.min(32) + 1);
            let run = bytes[at..at + len].to_vec();
            bytes.splice(
                at..at,
                run.iter()
                    .copied()
                    .cycle()
                    .take(len * (1 + usize::from(byte % 8))),
            );
        }
        // Splice in a run of another seed.
        4 => {
            let donor = &all[other % all.len()];
            let from = usize::from(byte) % (donor.len() + 1);
            let len = (other / 7) % (donor.len() - from + 1).min(64);
            bytes.splice(at..at, donor[from..from + len].iter().copied());
        }
        // Cut the input short.
        _ => bytes.truncate(at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_edit_keeps_in_bounds_on_any_input() {
        let all = vec![b"{\"type\":\"x\"}".to_vec(), Vec::new(), b"a".to_vec()];
        for kind in 0..6 {
            for at in [0, 1, 5, 11, 12, 13, usize::MAX] {
                for other in [0, 1, 7, 100, usize::MAX] {
                    for input in &all {
                        let mut bytes = input.clone();
                        apply(&mut bytes, (kind, at, other, 200), &all);
                        apply(&mut bytes, (kind, at, other, 3), &all);
                    }
                }
            }
        }
    }
}

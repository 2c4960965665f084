//! Lost and duplicated writes: a list-append workload.
//!
//! Clients append unique elements to a few keys, each append a
//! read-modify-write under `If-Match` (so two appends that read the same
//! version cannot both land). After the faults are healed every list is
//! read once more. Then:
//! - every acknowledged append is in its final list (else: lost);
//! - no element is there twice (duplicated: a retried write applied twice);
//! - nothing is there that no append may have written (a 412'd append's
//!   element, or one never sent: a phantom);
//! - acknowledged appends that followed each other in real time appear in
//!   that order.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::history::{Micros, Outcome, ProcessId};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Append {
    pub process: ProcessId,
    pub key: String,
    pub element: u64,
    pub outcome: Outcome,
    pub invoke_us: Micros,
    pub complete_us: Micros,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetAnomaly {
    Lost {
        key: String,
        element: u64,
    },
    Duplicated {
        key: String,
        element: u64,
    },
    Phantom {
        key: String,
        element: u64,
    },
    Reordered {
        key: String,
        first: u64,
        then: u64,
    },
    /// The final read of a key never succeeded.
    Unread {
        key: String,
    },
}

impl std::fmt::Display for SetAnomaly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetAnomaly::Lost { key, element } => write!(f, "{key}: acknowledged append {element} is missing"),
            SetAnomaly::Duplicated { key, element } => write!(f, "{key}: {element} appears more than once"),
            SetAnomaly::Phantom { key, element } => write!(f, "{key}: {element} was never written"),
            SetAnomaly::Reordered { key, first, then } => {
                write!(f, "{key}: {then} comes before {first}, which was acknowledged before {then} was sent")
            }
            SetAnomaly::Unread { key } => write!(f, "{key}: the final read never answered"),
        }
    }
}

/// `finals`: each key's list as read at the end (None: that read failed).
pub fn check(appends: &[Append], finals: &HashMap<String, Option<Vec<u64>>>) -> Vec<SetAnomaly> {
    let mut out = Vec::new();
    let mut keys: Vec<&String> = finals.keys().collect();
    keys.sort();
    for key in keys {
        let Some(list) = &finals[key] else {
            out.push(SetAnomaly::Unread { key: key.clone() });
            continue;
        };
        let mine: Vec<&Append> = appends.iter().filter(|a| &a.key == key).collect();
        let mut seen = HashSet::new();
        let mut position = HashMap::new();
        for (i, e) in list.iter().enumerate() {
            if !seen.insert(*e) {
                out.push(SetAnomaly::Duplicated { key: key.clone(), element: *e });
            }
            position.entry(*e).or_insert(i);
        }
        let possible: HashSet<u64> = mine.iter().filter(|a| a.outcome != Outcome::Fail).map(|a| a.element).collect();
        for e in list.iter().filter(|e| !possible.contains(e)) {
            out.push(SetAnomaly::Phantom { key: key.clone(), element: *e });
        }
        let acked: Vec<&&Append> = mine.iter().filter(|a| a.outcome == Outcome::Ok).collect();
        for a in &acked {
            if !seen.contains(&a.element) {
                out.push(SetAnomaly::Lost { key: key.clone(), element: a.element });
            }
        }
        for a in &acked {
            for b in &acked {
                if a.complete_us < b.invoke_us {
                    if let (Some(pa), Some(pb)) = (position.get(&a.element), position.get(&b.element)) {
                        if pb < pa {
                            out.push(SetAnomaly::Reordered { key: key.clone(), first: a.element, then: b.element });
                        }
                    }
                }
            }
        }
    }
    out
}

/// The list's wire form: comma-separated decimal elements.
pub fn encode(list: &[u64]) -> String {
    list.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// Parses [`encode`]'s form (an empty value is an empty list).
pub fn decode(s: &str) -> Option<Vec<u64>> {
    if s.is_empty() {
        return Some(Vec::new());
    }
    s.split(',').map(|e| e.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(element: u64, outcome: Outcome, a: u64, b: u64) -> Append {
        Append { process: 1, key: "k".into(), element, outcome, invoke_us: a, complete_us: b }
    }
    fn finals(list: Option<Vec<u64>>) -> HashMap<String, Option<Vec<u64>>> {
        HashMap::from([("k".to_string(), list)])
    }

    #[test]
    fn a_clean_history_passes_with_unknown_appends_either_way() {
        let h = vec![
            append(1, Outcome::Ok, 0, 1),
            append(2, Outcome::Info, 2, 3),
            append(3, Outcome::Fail, 2, 3),
            append(4, Outcome::Ok, 4, 5),
            append(5, Outcome::Info, 6, 7),
        ];
        assert_eq!(check(&h, &finals(Some(vec![1, 2, 4]))), vec![]);
        assert_eq!(check(&h, &finals(Some(vec![1, 4, 5]))), vec![]);
    }

    #[test]
    fn lost_duplicated_phantom_and_reordered_elements_are_caught() {
        let h = vec![append(1, Outcome::Ok, 0, 1), append(2, Outcome::Ok, 2, 3), append(3, Outcome::Fail, 4, 5)];
        assert_eq!(check(&h, &finals(Some(vec![1]))), vec![SetAnomaly::Lost { key: "k".into(), element: 2 }]);
        assert_eq!(
            check(&h, &finals(Some(vec![1, 2, 2]))),
            vec![SetAnomaly::Duplicated { key: "k".into(), element: 2 }]
        );
        assert_eq!(check(&h, &finals(Some(vec![1, 2, 3]))), vec![SetAnomaly::Phantom { key: "k".into(), element: 3 }]);
        assert_eq!(
            check(&h, &finals(Some(vec![2, 1]))),
            vec![SetAnomaly::Reordered { key: "k".into(), first: 1, then: 2 }]
        );
        assert_eq!(check(&h, &finals(None)), vec![SetAnomaly::Unread { key: "k".into() }]);
    }

    #[test]
    fn lists_round_trip_and_garbage_is_refused() {
        assert_eq!(decode(&encode(&[3, 1, 2])), Some(vec![3, 1, 2]));
        assert_eq!(decode(""), Some(vec![]));
        assert_eq!(decode("1,x"), None);
    }
}

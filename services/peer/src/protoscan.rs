//! A bounded pre-scan of Raft messages from peers, before protobuf 2
//! decodes them.
//!
//! raft-rs pulls `protobuf` 2.x, which RUSTSEC-2024-0437 lists as
//! recursing without bound on crafted nested input. The 2.28 this build
//! uses was checked: 200,000 nested start-group tags in a Raft message
//! give an error, not a crash, since it refuses unknown groups. The scan
//! keeps the refusal ours, bounded and independent of the protobuf
//! version raft pulls: Raft's messages never contain groups, so it walks
//! the wire format of `eraftpb::Message` and the messages nested in it
//! (entries, snapshot, its metadata and conf state), refuses any group
//! tag, truncated field or reserved wire type, and bounds the nesting. It
//! skips bytes fields by their length, so it costs a pass over the tags,
//! not the data. Only bytes that pass reach `parse_from_bytes`.
//!
//! Pure: a function of the bytes.

/// Deeper than `Message > Snapshot > SnapshotMetadata > ConfState` is never valid.
const DEPTH_MAX: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Message,
    Entry,
    Snapshot,
    SnapshotMetadata,
    ConfState,
}

/// The message type of a length-delimited field, if it is a message
/// (other length-delimited fields are bytes or packed scalars).
fn nested(kind: Kind, field: u64) -> Option<Kind> {
    match (kind, field) {
        (Kind::Message, 7) => Some(Kind::Entry),
        (Kind::Message, 9) => Some(Kind::Snapshot),
        (Kind::Snapshot, 2) => Some(Kind::SnapshotMetadata),
        (Kind::SnapshotMetadata, 1) => Some(Kind::ConfState),
        _ => None,
    }
}

/// Checks that `bytes` are an `eraftpb::Message` protobuf 2 can decode
/// without unbounded recursion.
pub fn check_raft_message(bytes: &[u8]) -> Result<(), String> {
    walk(bytes, Kind::Message, 1)
}

fn varint(b: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *b.get(*at).ok_or("truncated varint")?;
        *at += 1;
        v |= u64::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

fn walk(b: &[u8], kind: Kind, depth: usize) -> Result<(), String> {
    if depth > DEPTH_MAX {
        return Err(format!("nested deeper than {DEPTH_MAX} messages"));
    }
    let mut at = 0;
    while at < b.len() {
        let tag = varint(b, &mut at)?;
        let (field, wire_type) = (tag >> 3, tag & 7);
        if field == 0 {
            return Err("field number 0".into());
        }
        let skip = |at: &mut usize, n: u64| -> Result<(), String> {
            let end = at.checked_add(usize::try_from(n).map_err(|_| "length overflow")?).ok_or("length overflow")?;
            if end > b.len() {
                return Err(format!("field {field} runs past the message"));
            }
            *at = end;
            Ok(())
        };
        match wire_type {
            0 => {
                varint(b, &mut at)?;
            }
            1 => skip(&mut at, 8)?,
            5 => skip(&mut at, 4)?,
            2 => {
                let len = varint(b, &mut at)?;
                let start = at;
                skip(&mut at, len)?;
                if let Some(inner) = nested(kind, field) {
                    walk(&b[start..at], inner, depth + 1)?;
                }
            }
            3 | 4 => return Err(format!("field {field} is a group, which Raft messages never hold")),
            other => return Err(format!("reserved wire type {other} in field {field}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message as _;
    use raft::eraftpb::{ConfState, Entry, Message, MessageType, Snapshot};

    fn full_message() -> Vec<u8> {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.to = 2;
        m.from = 1;
        m.term = 9;
        m.commit = 7;
        m.context = b"ctx".to_vec().into();
        m.mut_entries().push(Entry { index: 7, term: 9, data: vec![0xff; 300].into(), ..Default::default() });
        let mut s = Snapshot { data: vec![1, 2, 3].into(), ..Default::default() };
        let meta = s.mut_metadata();
        meta.index = 6;
        meta.set_conf_state(ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            auto_leave: true,
            ..Default::default()
        });
        m.set_snapshot(s);
        m.write_to_bytes().unwrap()
    }

    #[test]
    fn every_message_raft_writes_passes() {
        let bytes = full_message();
        check_raft_message(&bytes).unwrap();
        assert_eq!(Message::parse_from_bytes(&bytes).unwrap().get_snapshot().get_metadata().index, 6);
        check_raft_message(&Message::default().write_to_bytes().unwrap()).unwrap();
        check_raft_message(&[]).unwrap();
    }

    #[test]
    fn groups_are_refused_at_every_depth_before_protobuf_sees_them() {
        // A start-group tag (field 50, wire type 3) at the top level, and
        // a hundred thousand nested ones (the advisory's shape).
        assert!(check_raft_message(&[0x93, 0x03]).unwrap_err().contains("group"));
        let bomb: Vec<u8> = std::iter::repeat_n([0x93u8, 0x03], 100_000).flatten().collect();
        assert!(check_raft_message(&bomb).unwrap_err().contains("group"));
        // Inside an entry (field 7) and inside the snapshot's conf state.
        let in_entry = [0x3a, 0x02, 0x0b, 0x0c];
        assert!(check_raft_message(&in_entry).unwrap_err().contains("group"));
        let conf = [0x0b, 0x0c]; // ConfState holding a group
        let meta = [&[0x0a, conf.len() as u8][..], &conf].concat();
        let snap = [&[0x12, meta.len() as u8][..], &meta].concat();
        let msg = [&[0x4a, snap.len() as u8][..], &snap].concat();
        assert!(check_raft_message(&msg).unwrap_err().contains("group"));
        // The same bytes as a plain bytes field (context, 12) are data.
        let ctx = [&[0x62, conf.len() as u8][..], &conf].concat();
        check_raft_message(&ctx).unwrap();
    }

    #[test]
    fn truncation_and_garbage_are_errors_never_panics() {
        let bytes = full_message();
        for cut in 1..bytes.len() {
            // Some prefixes end on a field boundary and are valid messages;
            // none may panic, and any the scan passes protobuf decodes.
            if check_raft_message(&bytes[..cut]).is_ok() {
                assert!(Message::parse_from_bytes(&bytes[..cut]).is_ok(), "cut at {cut}");
            }
        }
        assert!(check_raft_message(&[0xff; 11]).is_err(), "an endless varint");
        assert!(check_raft_message(&[0x00]).is_err(), "field 0");
        assert!(check_raft_message(&[0x0e]).is_err(), "wire type 6");
        assert!(check_raft_message(&[0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err(), "a length past the end");
        // Random inputs (seeded): whatever the scan passes, protobuf parses.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 64) as usize;
            let input: Vec<u8> = (0..len).map(|i| (x.rotate_left(i as u32 * 8) & 0xff) as u8).collect();
            if check_raft_message(&input).is_ok() {
                let _ = Message::parse_from_bytes(&input);
            }
        }
    }
}

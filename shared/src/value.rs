//! The record stored under a data key: `[format=1][version BE8]
//! [expires_at_ms BE8 (0 = never)][value bytes]`.
//!
//! The version is the Raft index of the entry that wrote the value, so
//! conditional writes (`If-Match`) and TTL checks need no second lookup.

use crate::codec::{CodecError, Reader, Writer};

const FORMAT_V1: u8 = 1;
/// Bytes in front of the value itself.
pub const HEADER_LEN: usize = 17;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredValue {
    /// Raft index of the entry that wrote this value.
    pub version: u64,
    /// Leader wall-clock milliseconds (Unix epoch) at which the value
    /// expires; `None` never expires.
    pub expires_at_ms: Option<u64>,
    pub data: Vec<u8>,
}

impl StoredValue {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(HEADER_LEN + self.data.len());
        w.u8(FORMAT_V1);
        w.u64(self.version);
        w.u64(self.expires_at_ms.unwrap_or(0));
        w.buf.extend_from_slice(&self.data);
        w.buf
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let (version, expires_at_ms) = Self::decode_header(bytes)?;
        Ok(StoredValue { version, expires_at_ms, data: bytes[HEADER_LEN..].to_vec() })
    }

    /// `(version, expires_at_ms)` without copying the value bytes.
    pub fn decode_header(bytes: &[u8]) -> Result<(u64, Option<u64>), CodecError> {
        let mut r = Reader::new(bytes);
        let format = r.u8("value format")?;
        if format != FORMAT_V1 {
            return Err(CodecError::UnsupportedFormat(format));
        }
        let version = r.u64("value version")?;
        let expires = r.u64("value expiry")?;
        Ok((version, (expires != 0).then_some(expires)))
    }

    /// Whether the value is gone at `now_ms` (a leader-stamped time).
    pub fn is_expired_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|e| now_ms >= e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for v in [
            StoredValue { version: 7, expires_at_ms: None, data: vec![] },
            StoredValue { version: u64::MAX, expires_at_ms: Some(1), data: b"hello".to_vec() },
        ] {
            assert_eq!(StoredValue::decode(&v.encode()).unwrap(), v);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(StoredValue::decode(b"").is_err());
        assert!(StoredValue::decode(&[1, 0, 0]).is_err());
        assert_eq!(StoredValue::decode(&[9; 20]), Err(CodecError::UnsupportedFormat(9)));
    }

    #[test]
    fn expiry_is_inclusive() {
        let v = StoredValue { version: 1, expires_at_ms: Some(100), data: vec![] };
        assert!(!v.is_expired_at(99));
        assert!(v.is_expired_at(100));
        let forever = StoredValue { expires_at_ms: None, ..v };
        assert!(!forever.is_expired_at(u64::MAX));
    }
}

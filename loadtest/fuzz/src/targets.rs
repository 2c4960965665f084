//! The fuzz targets: what each runs on an input and what it checks.

use ringstore_api::error::ApiError;
use ringstore_api::{batch, params, request, scan, txn, watch};
use ringstore_peer::wire::{self, Frame, Reassembly};
use ringstore_shared::cluster_map::ClusterMap;
use ringstore_shared::command::Proposal;
use ringstore_shared::config::Limits;
use ringstore_shared::lock::{FenceRecord, LockRecord};
use ringstore_shared::value::StoredValue;

use crate::Verdict;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One peer frame, header included: `wire::frame_len`, `wire::decode`
    /// (the protobuf pre-scan and decode of Raft messages inside).
    PeerFrame,
    /// A stream of frames fed to snapshot reassembly, as an inbound peer
    /// connection does: sizes, order, the digest.
    SnapshotStream,
    /// Raft entries and stored records (the first byte picks which):
    /// decode, and a decoded value round-trips.
    EntryCodecs,
    /// Request parsing (the first byte picks the parser): bodies of
    /// batches and transactions, query strings, key and lock paths, the
    /// headers; a refusal is a 4xx.
    HttpRequest,
}

impl Target {
    pub const ALL: [Target; 4] = [Target::PeerFrame, Target::SnapshotStream, Target::EntryCodecs, Target::HttpRequest];

    pub fn name(self) -> &'static str {
        match self {
            Target::PeerFrame => "peer_frame",
            Target::SnapshotStream => "snapshot_stream",
            Target::EntryCodecs => "entry_codecs",
            Target::HttpRequest => "http_request",
        }
    }

    pub fn parse(s: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Mixed into the seed, so targets run different mutation sequences.
    pub(crate) fn salt(self) -> u64 {
        ringstore_shared::hash::hash64(self.name().as_bytes())
    }

    /// Runs the target on `input`: `Err` when a rule is broken.
    pub fn check(self, input: &[u8]) -> Result<Verdict, String> {
        match self {
            Target::PeerFrame => peer_frame(input),
            Target::SnapshotStream => snapshot_stream(input),
            Target::EntryCodecs => entry_codecs(input),
            Target::HttpRequest => http_request(input),
        }
    }
}

/// A rejection label: the error's kind without its numbers, so the report
/// counts error paths rather than inputs.
fn rejected(e: &impl std::fmt::Debug) -> Verdict {
    let text = format!("{e:?}");
    let label: String = text.split([',', '(']).next().unwrap_or_default().chars().take(60).collect();
    Verdict::Rejected(label.chars().filter(|c| !c.is_ascii_digit()).collect())
}

fn peer_frame(input: &[u8]) -> Result<Verdict, String> {
    let Some(header) = input.get(..wire::FRAME_HEADER_BYTES) else {
        return Ok(Verdict::Rejected("shorter than a header".into()));
    };
    let header: [u8; wire::FRAME_HEADER_BYTES] = header.try_into().map_err(|_| "header length".to_string())?;
    let len = match wire::frame_len(header) {
        Ok(len) => len,
        Err(e) => return Ok(rejected(&e)),
    };
    let body = &input[wire::FRAME_HEADER_BYTES..];
    match wire::decode(&body[..len.min(body.len())]) {
        Ok(Frame::Hello(h)) => {
            let _ = wire::check_hello(&h, 1, 1, &[1, 2, 3]);
            Ok(Verdict::Accepted)
        }
        Ok(_) => Ok(Verdict::Accepted),
        Err(e) => Ok(rejected(&e)),
    }
}

fn snapshot_stream(mut input: &[u8]) -> Result<Verdict, String> {
    let mut r = Reassembly::default();
    let mut done = 0;
    while input.len() >= wire::FRAME_HEADER_BYTES {
        let (header, rest) = input.split_at(wire::FRAME_HEADER_BYTES);
        let header: [u8; wire::FRAME_HEADER_BYTES] = header.try_into().map_err(|_| "header length".to_string())?;
        let len = match wire::frame_len(header) {
            Ok(len) => len,
            Err(e) => return Ok(rejected(&e)),
        };
        let Some(body) = rest.get(..len) else { return Ok(Verdict::Rejected("truncated frame".into())) };
        input = &rest[len..];
        // A connection stops at the first frame it refuses.
        match wire::decode(body) {
            Ok(Frame::SnapshotChunk(c)) => match r.accept(c) {
                Ok(Some(_)) => done += 1,
                Ok(None) => {}
                Err(e) => return Ok(rejected(&e)),
            },
            Ok(_) => return Ok(Verdict::Rejected("not a chunk".into())),
            Err(e) => return Ok(rejected(&e)),
        }
    }
    Ok(if done > 0 { Verdict::Accepted } else { Verdict::Rejected("no complete snapshot".into()) })
}

/// Decodes with `decode`; a value must encode and decode back to itself.
fn round_trip<T: PartialEq + std::fmt::Debug, E: std::fmt::Debug>(
    what: &str,
    bytes: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, E>,
    encode: impl Fn(&T) -> Vec<u8>,
) -> Result<Verdict, String> {
    match decode(bytes) {
        Ok(v) => match decode(&encode(&v)) {
            Ok(back) if back == v => Ok(Verdict::Accepted),
            Ok(back) => Err(format!("{what}: {v:?} encoded and decoded as {back:?}")),
            Err(e) => Err(format!("{what}: {v:?} encoded to bytes its decoder refuses: {e:?}")),
        },
        Err(e) => Ok(rejected(&e)),
    }
}

/// Which codec [`entry_codecs`] runs: the first byte of the input.
pub const CODEC_PROPOSAL: u8 = 0;
pub const CODEC_CLUSTER_MAP: u8 = 1;
pub const CODEC_VALUE: u8 = 2;
pub const CODEC_LOCK: u8 = 3;
pub const CODEC_FENCES: u8 = 4;
const CODECS: u8 = 5;

fn entry_codecs(input: &[u8]) -> Result<Verdict, String> {
    let Some((&which, bytes)) = input.split_first() else { return Ok(Verdict::Rejected("empty".into())) };
    match which % CODECS {
        CODEC_PROPOSAL => round_trip("proposal", bytes, Proposal::decode, Proposal::encode),
        CODEC_CLUSTER_MAP => round_trip("cluster map", bytes, ClusterMap::decode, ClusterMap::encode),
        CODEC_VALUE => round_trip("stored value", bytes, StoredValue::decode, StoredValue::encode),
        CODEC_LOCK => round_trip("lock record", bytes, LockRecord::decode, LockRecord::encode),
        _ => round_trip("fence record", bytes, FenceRecord::decode, FenceRecord::encode),
    }
}

/// Which parser [`http_request`] runs: the first byte of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Parser {
    BatchBody,
    TxnBody,
    KvQuery,
    ScanQuery,
    KeyPath,
    LockPath,
    FencingToken,
    IfMatch,
    IfNoneMatch,
    IdempotencyKey,
    RequestTimeout,
    WatchPosition,
    Duration,
}

impl Parser {
    const ALL: [Parser; 13] = [
        Parser::BatchBody,
        Parser::TxnBody,
        Parser::KvQuery,
        Parser::ScanQuery,
        Parser::KeyPath,
        Parser::LockPath,
        Parser::FencingToken,
        Parser::IfMatch,
        Parser::IfNoneMatch,
        Parser::IdempotencyKey,
        Parser::RequestTimeout,
        Parser::WatchPosition,
        Parser::Duration,
    ];

    fn of(b: u8) -> Parser {
        Parser::ALL[usize::from(b) % Parser::ALL.len()]
    }
}

fn http_request(input: &[u8]) -> Result<Verdict, String> {
    let Some((&which, payload)) = input.split_first() else { return Ok(Verdict::Rejected("empty".into())) };
    let limits = Limits::default();
    // Paths and queries reach handlers as text; header values may not be.
    let text = std::str::from_utf8(payload);
    let header = Some(text.map_err(|_| ()));
    let need_text = || text.map_err(|_| ApiError::bad_request("not UTF-8"));
    let parser = Parser::of(which);
    let result: Result<(), ApiError> = match parser {
        Parser::BatchBody => batch::check(payload, &limits).map(drop),
        Parser::TxnBody => txn::check(payload, &limits).map(drop),
        Parser::KvQuery => need_text().and_then(|t| request::parse_query(t, &limits)).map(drop),
        Parser::ScanQuery => need_text().and_then(|t| scan::check_scan_query(t, limits.key_bytes_max)),
        Parser::KeyPath => {
            need_text().and_then(|t| request::parse_key(&format!("{}{t}", request::KV_PREFIX), &limits)).map(drop)
        }
        Parser::LockPath => need_text()
            .and_then(|t| {
                // The last byte of the input picks whether an action is matched.
                let action = (payload.last().is_some_and(|b| b % 2 == 0)).then_some("acquire");
                request::parse_lock_name(&format!("{}{t}", request::LOCKS_PREFIX), action, &limits)
            })
            .map(drop),
        Parser::FencingToken => request::parse_fence(header, &limits).map(drop),
        Parser::IfMatch => {
            // Two header values: If-Match, a newline, If-None-Match.
            let (a, b) = match payload.iter().position(|&c| c == b'\n') {
                Some(i) => (&payload[..i], Some(&payload[i + 1..])),
                None => (payload, None),
            };
            let h = |v: &[u8]| std::str::from_utf8(v).map_err(|_| ()).map(|s| s.to_string());
            let (a, b) = (h(a), b.map(h));
            let is_put = payload.len() % 2 == 0;
            request::parse_precondition(
                Some(a.as_deref().map_err(|_| ())),
                b.as_ref().map(|r| r.as_deref().map_err(|_| ())),
                is_put,
            )
            .map(drop)
        }
        Parser::IfNoneMatch => request::parse_if_none_match(header).map(drop),
        Parser::IdempotencyKey => request::parse_idempotency_key(header).map(drop),
        Parser::RequestTimeout => request::parse_timeout(header, &limits).map(drop),
        Parser::WatchPosition => need_text().and_then(watch::Position::parse).map(drop),
        Parser::Duration => need_text()
            .and_then(|t| {
                params::duration_in("wait", t, std::time::Duration::from_millis(1), std::time::Duration::from_secs(60))
            })
            .map(drop),
    };
    match result {
        Ok(()) => Ok(Verdict::Accepted),
        Err(e) if e.status.is_client_error() => Ok(Verdict::Rejected(format!("{parser:?} {}", e.code))),
        Err(e) => Err(format!("{parser:?} answered {} ({}): {}", e.status, e.code, e.message)),
    }
}
